"""The model-inference server: holds the models, the hooks and the loaded SAEs."""
