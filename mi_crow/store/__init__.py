"""Hierarchical artifact store: activation runs as checksummed safetensors shards, SAEs, concepts."""

from mi_crow.store.activation_run import ActivationRun, ActivationRunWriter, IncompleteRunError
from mi_crow.store.atomic import atomic_write_bytes, atomic_write_json, read_json
from mi_crow.store.local_store import LocalStore, default_store_root, new_id
from mi_crow.store.manifest import LayerRecord, RunManifest, ShardRecord
from mi_crow.store.names import InvalidNameError, model_key, validate_name
from mi_crow.store.shards import CorruptShardError, read_shard, write_shard

__all__ = [
    "ActivationRun",
    "ActivationRunWriter",
    "CorruptShardError",
    "IncompleteRunError",
    "InvalidNameError",
    "LayerRecord",
    "LocalStore",
    "RunManifest",
    "ShardRecord",
    "atomic_write_bytes",
    "atomic_write_json",
    "default_store_root",
    "model_key",
    "new_id",
    "read_json",
    "read_shard",
    "validate_name",
    "write_shard",
]
