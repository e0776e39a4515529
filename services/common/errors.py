"""Library exceptions become precise gRPC statuses with the library's own (actionable) message."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc

from mi_crow.datasets import DatasetError
from mi_crow.language_model import HarvestCancelled, ModelLoadError, UnknownLayerError
from mi_crow.mechanistic.concepts import ConceptValidationError
from mi_crow.store import CorruptShardError, IncompleteRunError, InvalidNameError

log = logging.getLogger("mi_crow.services")


class ServiceError(Exception):
    """Raise with an explicit status when no library exception says it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# Order matters: the first matching class wins (subclasses before their bases).
_MAPPING: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (CorruptShardError, grpc.StatusCode.DATA_LOSS),
    (HarvestCancelled, grpc.StatusCode.CANCELLED),
    (IncompleteRunError, grpc.StatusCode.FAILED_PRECONDITION),
    (ModelLoadError, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidNameError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownLayerError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConceptValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (DatasetError, grpc.StatusCode.INVALID_ARGUMENT),
    (FileExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (FileNotFoundError, grpc.StatusCode.NOT_FOUND),
    (PermissionError, grpc.StatusCode.PERMISSION_DENIED),
    (MemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (TypeError, grpc.StatusCode.INVALID_ARGUMENT),
    (KeyError, grpc.StatusCode.NOT_FOUND),
]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    for cls, code in _MAPPING:
        if isinstance(exc, cls):
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            return code, str(message)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}): {exc}"


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method)
    else:
        log.info("%s -> %s: %s", method, code.name, message)
    context.abort(code, message)


def map_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap one servicer method (unary or server-streaming) so that exceptions become statuses."""
    name = fn.__qualname__
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from fn(self, request, context)
            except grpc.RpcError:
                raise
            except Exception as exc:
                _abort(context, exc, name)

        return stream

    @functools.wraps(fn)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except grpc.RpcError:
            raise
        except Exception as exc:
            _abort(context, exc, name)

    return unary


def servicer(cls: type) -> type:
    """Class decorator: apply ``map_errors`` to every public method the servicer defines."""
    for attr, value in list(vars(cls).items()):
        if callable(value) and not attr.startswith("_"):
            setattr(cls, attr, map_errors(value))
    return cls
