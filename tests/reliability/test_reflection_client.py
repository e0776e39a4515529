"""A generic client that knows nothing of mi-crow (no .proto files, no stubs) discovers the services over
server reflection, builds a request from the descriptors it fetched, and calls it."""

from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from mi_crow.services.artifacts.server import start_artifact_server
from mi_crow.services.common.config import ServerConfig


def test_reflection_alone_is_enough_to_call_the_api(tmp_path: Path, redis_server: str):
    running = start_artifact_server(ServerConfig(port=0, redis_url=redis_server, artifact_root=tmp_path / "s"))
    try:
        with grpc.insecure_channel(running.address) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = set(database.get_services())
            assert {"mi_crow.v1.ArtifactService", "mi_crow.v1.JobService"} <= services
            pool = descriptor_pool.DescriptorPool(database)  # a private pool: nothing from mi_crow.v1 is used
            method = pool.FindServiceByName("mi_crow.v1.ArtifactService").methods_by_name["ListSaeClasses"]
            request_cls = message_factory.GetMessageClass(method.input_type)
            response_cls = message_factory.GetMessageClass(method.output_type)
            call = channel.unary_unary(
                f"/{method.containing_service.full_name}/{method.name}",
                request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString,
            )
            reply = call(request_cls(), timeout=10)
            assert "TopKSae" in list(reply.names)
            documented = pool.FindMessageTypeByName("mi_crow.v1.TrainingRequest")
            assert "idempotency_key" in documented.fields_by_name
    finally:
        running.stop(0)
