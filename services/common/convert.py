"""Conversions between library objects and protobuf messages."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import torch

from mi_crow.datasets import TextDataset
from mi_crow.services.common.errors import ServiceError
from mi_crow.store import RunManifest
from mi_crow.v1 import artifacts_pb2, common_pb2

_DTYPES = {
    torch.float32: common_pb2.FLOAT32,
    torch.float16: common_pb2.FLOAT16,
    torch.bfloat16: common_pb2.BFLOAT16,
    torch.int32: common_pb2.INT32,
    torch.int64: common_pb2.INT64,
}
_TORCH = {v: k for k, v in _DTYPES.items()}

CHUNK_BYTES = 1 << 20  # ~1 MiB per message: HTTP/2 flow control keeps a few in flight (see FACTS)


def tensor_to_chunk(
    tensor: torch.Tensor,
    *,
    layer: str = "",
    sequence: int = 0,
    token_ids: Sequence[int] = (),
    positions: Sequence[int] = (),
    sample_index: Sequence[int] = (),
    last: bool = False,
) -> common_pb2.TensorChunk:
    tensor = tensor.detach().contiguous().cpu()
    if tensor.dtype not in _DTYPES:
        raise ValueError(f"cannot send tensors of dtype {tensor.dtype}")
    # bfloat16 has no numpy dtype: reinterpret the same bytes as int16 to get at them.
    raw = (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy().tobytes()
    return common_pb2.TensorChunk(
        layer=layer,
        dtype=_DTYPES[tensor.dtype],
        shape=list(tensor.shape),
        little_endian=True,
        sequence=sequence,
        data=raw,
        token_ids=list(token_ids),
        positions=list(positions),
        sample_index=list(sample_index),
        sha256=hashlib.sha256(raw).hexdigest(),
        last=last,
    )


def chunk_to_tensor(chunk: common_pb2.TensorChunk, *, verify: bool = True) -> torch.Tensor:
    """Zero-copy view over the received bytes (checked against the chunk's sha256)."""
    if chunk.dtype not in _TORCH:
        raise ValueError(f"unknown dtype {chunk.dtype} in tensor chunk {chunk.sequence}")
    if not chunk.little_endian:
        raise ValueError("big-endian tensor chunks are not supported")
    if verify and chunk.sha256 and hashlib.sha256(chunk.data).hexdigest() != chunk.sha256:
        raise ValueError(f"tensor chunk {chunk.sequence} of layer {chunk.layer!r} failed its checksum")
    dtype = _TORCH[chunk.dtype]
    if not chunk.data:
        return torch.empty(tuple(chunk.shape), dtype=dtype)
    flat = torch.frombuffer(bytearray(chunk.data) if dtype == torch.bfloat16 else chunk.data, dtype=dtype)
    return flat.reshape(tuple(chunk.shape))


def rows_per_chunk(d_model: int, element_size: int) -> int:
    return max(1, CHUNK_BYTES // max(1, d_model * element_size))


def iter_chunks(
    tensor: torch.Tensor, *, layer: str, start_sequence: int, rows: int, **cols: torch.Tensor
) -> Iterator[common_pb2.TensorChunk]:
    """Split (n, d) rows plus per-row columns into chunks of ``rows`` rows."""
    seq = start_sequence
    for lo in range(0, tensor.shape[0], rows):
        hi = lo + rows
        extra = {k: v[lo:hi].tolist() for k, v in cols.items()}
        yield tensor_to_chunk(tensor[lo:hi], layer=layer, sequence=seq, **extra)
        seq += 1


def dataset_from_spec(spec: common_pb2.DatasetSpec, allowed_roots: Sequence[Path]) -> TextDataset:
    """A TextDataset from a request, refusing server paths outside the configured dataset roots."""
    limit = spec.sample_limit or None
    field = spec.text_field or "text"
    sources = sum(bool(x) for x in (list(spec.texts), spec.hf_name, list(spec.paths)))
    if sources != 1:
        raise ValueError("dataset: set exactly one of texts, hf_name or paths")
    if spec.texts:
        return TextDataset.from_texts(list(spec.texts), sample_limit=limit)
    if spec.hf_name:
        return TextDataset.from_hf(spec.hf_name, split=spec.split or "train", text_field=field, sample_limit=limit)
    paths = []
    for raw in spec.paths:
        path = Path(raw).expanduser().resolve()  # resolves symlinks too
        if not any(path == root or root in path.parents for root in allowed_roots):
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"dataset path {raw!r} is outside the server's allowed dataset roots (MI_CROW_DATASET_ROOTS)",
            )
        paths.append(path)
    return TextDataset.from_files(paths, text_field=field, sample_limit=limit, split=spec.split or None)


def run_info(manifest: RunManifest, root: Path, run_dir: Path) -> artifacts_pb2.RunInfo:
    return artifacts_pb2.RunInfo(
        run_id=manifest.run_id,
        model_id=manifest.model_id,
        status=manifest.status,
        layers=[
            artifacts_pb2.LayerRecord(
                name=layer.name,
                d_model=layer.d_model,
                dtype=layer.dtype,
                n_tokens=layer.n_tokens,
                n_shards=len(layer.shards),
            )
            for layer in manifest.layers.values()
        ],
        n_tokens=manifest.n_tokens,
        n_samples=manifest.n_samples,
        created_at=manifest.created_at,
        error=manifest.error or "",
        manifest_path=str((run_dir / "manifest.json").relative_to(root)),
    )


def sae_info(meta: dict[str, Any]) -> common_pb2.SaeInfo:
    return common_pb2.SaeInfo(
        sae_id=meta.get("sae_id") or "",
        model_id=meta.get("model_id") or "",
        layer=meta.get("layer") or "",
        sae_class=meta.get("sae_class", ""),
        d_in=int(meta.get("d_in", 0)),
        n_latents=int(meta.get("n_latents", 0)),
        created_at=float(meta.get("created_at", 0.0)),
        metadata_json=json.dumps(meta, sort_keys=True),
    )
