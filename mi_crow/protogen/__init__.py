"""Generating the Python gRPC stubs from ``protos/`` (run by the build; see setup.py)."""
