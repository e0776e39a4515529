"""Runner scripts executed by each competitor's own interpreter (see ``benchmarks/envs.py``)."""
