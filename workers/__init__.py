"""RQ workers of the mi-crow cluster (installed as ``mi_crow.workers``)."""
