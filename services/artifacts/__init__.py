"""The metadata/artifact service: runs, SAEs, concepts and training jobs (Redis + shared volume)."""
