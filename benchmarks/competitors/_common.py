"""Shared by the runner scripts: arguments, data loading, the explained-variance measure, the JSON line.

Runners are executed as scripts by a competitor's interpreter, so this module imports only torch and
safetensors (present in every env through the main venv's site-packages).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch


def sae_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", required=True, help="safetensors file with 'train' and 'held_out' tensors")
    parser.add_argument("--n-latents", type=int, required=True)
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="train under the library's bf16 autocast / AMP")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def load_data(path: str, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = load_file(path)
    return tensors["train"].to(device), tensors["held_out"].to(device)


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = x.float(), x_hat.float()
    return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0, keepdim=True)).pow(2).sum())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def emit(**result: Any) -> None:
    """The runner's one result line: the last JSON object on stdout is what the suite reads."""
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
