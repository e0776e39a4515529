"""Conversions between library objects and protobuf messages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from mi_crow.chunks import chunk_to_tensor, tensor_to_chunk
from mi_crow.datasets import TextDataset
from mi_crow.services.common.errors import ServiceError
from mi_crow.store import RunManifest
from mi_crow.v1 import artifacts_pb2, common_pb2

__all__ = [
    "check_evaluation_options",
    "chunk_to_tensor",
    "dataset_from_spec",
    "run_info",
    "sae_evaluation",
    "sae_info",
    "tensor_to_chunk",
]


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
        path = Path(raw).resolve()  # resolves symlinks too; '~' from a client is not expanded on the server
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


MAX_EVALUATION_TEXTS = 64  # EvaluationOptions.texts travel in the job record and in one EvaluateSae call


def check_evaluation_options(options: artifacts_pb2.EvaluationOptions) -> None:
    """Refuse at submission what would only fail in a job's evaluate phase."""
    if options.max_tokens < 0:
        raise ValueError(f"evaluation.max_tokens must not be negative, got {options.max_tokens}")
    if not 0 <= options.holdout_fraction < 1:
        raise ValueError(f"evaluation.holdout_fraction must be in [0, 1), got {options.holdout_fraction}")
    if len(options.texts) > MAX_EVALUATION_TEXTS:
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{len(options.texts)} evaluation texts; the limit is {MAX_EVALUATION_TEXTS}",
        )


def sae_evaluation(report: dict[str, Any]) -> common_pb2.SaeEvaluation:
    """An eval.json (``EvalReport.to_dict()``) as a message; undefined numbers (stored as null) become NaN."""
    known = common_pb2.SaeEvaluation.DESCRIPTOR.fields_by_name
    values = {k: v for k, v in report.items() if k in known}
    for key, value in list(values.items()):
        if value is None:
            # Downstream numbers of an evaluation without them stay unset; a number that is undefined is NaN.
            downstream = key.startswith(("ce_", "kl_"))
            if downstream and not report.get("has_downstream"):
                del values[key]
            else:
                values[key] = float("nan")
    return common_pb2.SaeEvaluation(**values)


def sae_info(meta: dict[str, Any], sae_dir: Path | None = None) -> common_pb2.SaeInfo:
    """``sae_dir``: where to look for the SAE's eval.json (filled into ``evaluation`` when present)."""
    evaluation = None
    if sae_dir is not None and (sae_dir / "eval.json").is_file():
        evaluation = sae_evaluation(json.loads((sae_dir / "eval.json").read_text(encoding="utf-8")))
    return common_pb2.SaeInfo(
        evaluation=evaluation,
        sae_id=meta.get("sae_id") or "",
        model_id=meta.get("model_id") or "",
        layer=meta.get("layer") or "",
        sae_class=meta.get("sae_class", ""),
        d_in=int(meta.get("d_in", 0)),
        n_latents=int(meta.get("n_latents", 0)),
        created_at=float(meta.get("created_at", 0.0)),
        metadata_json=json.dumps(meta, sort_keys=True),
    )
