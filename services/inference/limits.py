"""Request size limits: what one call may ask of the device before it must be split up."""

from __future__ import annotations

import grpc

from mi_crow.services.common.errors import ServiceError

MAX_INPUTS = 2  # Infer's compare mode
MAX_TEXTS = 64  # prompts per request, and texts per forward (batch size) of a harvest
MAX_NEW_TOKENS = 2048
# Unary responses carrying tensors stay well under the server's 16 MiB message limit.
MAX_RESPONSE_BYTES = 12 << 20
DEFAULT_BATCH_SIZE = 16


def check_inputs(n: int) -> None:
    if n == 0:
        raise ValueError("Infer needs at least one input")
    if n > MAX_INPUTS:
        raise ValueError(f"Infer takes at most {MAX_INPUTS} inputs (compare mode), got {n}")


def check_texts(n: int, what: str = "prompts") -> None:
    if n == 0:
        raise ValueError(f"no {what} given")
    if n > MAX_TEXTS:
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{n} {what} in one request; the limit is {MAX_TEXTS}: split the request",
        )


def batch_size(requested: int) -> int:
    if requested < 0:
        raise ValueError(f"batch_size must not be negative, got {requested}")
    if requested > MAX_TEXTS:
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"batch_size {requested} is over the limit of {MAX_TEXTS} texts per forward pass",
        )
    return requested or DEFAULT_BATCH_SIZE


def check_response_bytes(n_bytes: int, what: str, alternative: str) -> None:
    if n_bytes > MAX_RESPONSE_BYTES:
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{what} would take {n_bytes / 2**20:.1f} MiB, over the {MAX_RESPONSE_BYTES >> 20} MiB limit of one "
            f"response; {alternative}",
        )
