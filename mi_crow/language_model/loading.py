"""Loading a causal LM and its tokenizer from a hub id or a local directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mi_crow.language_model.errors import ModelLoadError

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key == "auto":
        return None
    if key not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(set(_DTYPES))} or 'auto'")
    return _DTYPES[key]


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def offline_by_env() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str  # the hub id or directory actually loaded
    is_local: bool


def load_causal_lm(
    source: str,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
    local_files_only: bool | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> LoadedModel:
    try:
        path = Path(source).expanduser()
    except RuntimeError:  # "~someone" for a user that does not exist: not a path we can use
        path = Path(source)
    is_local = path.is_dir()
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1
    if not is_local and looks_like_path:
        raise ModelLoadError(f"model directory {source!r} does not exist")
    if is_local and not (path / "config.json").is_file():
        raise ModelLoadError(f"directory {path} lacks model or tokenizer files (no config.json)")
    if local_files_only is None:
        local_files_only = is_local or offline_by_env()
    target = str(path) if is_local else source
    common: dict[str, Any] = {"local_files_only": local_files_only, "trust_remote_code": trust_remote_code}
    if revision:
        common["revision"] = revision
    torch_dtype = parse_dtype(dtype)
    kwargs: dict[str, Any] = dict(common)
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if device_map is not None:
        kwargs["device_map"] = device_map  # accelerate places the layers
    try:
        tokenizer = AutoTokenizer.from_pretrained(target, **common)
        model = AutoModelForCausalLM.from_pretrained(target, **kwargs)
    except OSError as exc:
        where = f"directory {target}" if is_local else f"hub id {target!r}"
        hint = (
            "it is not in the local Hugging Face cache and local_files_only is set (or the hub is unreachable); "
            "download it on a connected machine or pass a local directory"
            if not is_local
            else "it lacks model or tokenizer files (config.json, weights, tokenizer)"
        )
        raise ModelLoadError(f"cannot load model from {where}: {hint}. ({exc.__class__.__name__}: {exc})") from exc
    except ValueError as exc:
        raise ModelLoadError(f"cannot load {target!r} as a causal language model: {exc}") from exc
    if device_map is None:
        model.to(pick_device(device))
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=target, is_local=is_local)
