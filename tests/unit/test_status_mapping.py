"""Library exceptions map to precise gRPC statuses, with the library's own message."""

from __future__ import annotations

import grpc
import pytest

from mi_crow.datasets import EmptyDatasetError
from mi_crow.language_model import ModelLoadError, UnknownLayerError
from mi_crow.mechanistic.concepts import ConceptValidationError
from mi_crow.services.common.errors import ServiceError, status_for
from mi_crow.store import CorruptShardError, IncompleteRunError, InvalidNameError

CASES = [
    (CorruptShardError("shard x is corrupt"), grpc.StatusCode.DATA_LOSS),
    (IncompleteRunError("run r is failed"), grpc.StatusCode.FAILED_PRECONDITION),
    (ModelLoadError("not cached"), grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidNameError("invalid run id '../x'"), grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownLayerError("unknown layer 'h9'"), grpc.StatusCode.INVALID_ARGUMENT),
    (ConceptValidationError("latent 9 out of range"), grpc.StatusCode.INVALID_ARGUMENT),
    (EmptyDatasetError("texts"), grpc.StatusCode.INVALID_ARGUMENT),
    (FileExistsError("run exists"), grpc.StatusCode.ALREADY_EXISTS),
    (FileNotFoundError("no SAE"), grpc.StatusCode.NOT_FOUND),
    (PermissionError("outside the root"), grpc.StatusCode.PERMISSION_DENIED),
    (KeyError("no layer 'x'"), grpc.StatusCode.NOT_FOUND),
    (ValueError("k must be positive"), grpc.StatusCode.INVALID_ARGUMENT),
    (ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (RuntimeError("boom"), grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize("exc,code", CASES, ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else "")
def test_status_for(exc: BaseException, code: grpc.StatusCode):
    got, message = status_for(exc)
    assert got == code
    text = exc.args[0] if exc.args else ""
    assert str(text) in message or type(exc).__name__ in message
