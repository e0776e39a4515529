"""Register a generated servicer with some of its streams yielding already-encoded messages.

Generated ``add_XServicer_to_server`` functions fix each method's response serializer to the message
class's ``SerializeToString``. A handler that builds its wire bytes itself (``mi_crow.chunk_wire``) needs
that one serializer swapped; this takes the generated handlers, swaps it, and registers them as the
generated code would, so the methods, their names and the reflection data stay the generated ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc


class _Captured:
    """Stands in for a grpc.Server while generated code registers its handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers arrive again, by name, below

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, dict(handlers)


def with_response_serializers(
    add: Callable[[Any, grpc.Server], None], serializers: Mapping[str, Callable[[Any], bytes]]
) -> Callable[[Any, grpc.Server], None]:
    """``add`` with the response serializer of each method named in ``serializers`` replaced."""

    def add_with_serializers(servicer: Any, server: grpc.Server) -> None:
        captured = _Captured()
        add(servicer, captured)
        unknown = set(serializers) - set(captured.handlers)
        if unknown:
            raise ValueError(f"{captured.service or add.__name__} has no methods {sorted(unknown)}")
        handlers = {
            name: handler._replace(response_serializer=serializers[name]) if name in serializers else handler
            for name, handler in captured.handlers.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(captured.service, handlers),))
        server.add_registered_method_handlers(captured.service, handlers)

    return add_with_serializers
