"""gRPC services of the mi-crow cluster (installed as ``mi_crow.services``)."""
