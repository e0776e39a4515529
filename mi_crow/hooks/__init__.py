"""Detectors and controllers on any named layer, attached through context managers that always clean up."""

from mi_crow.hooks.controllers import FunctionController, NeuronMultiplierController
from mi_crow.hooks.detectors import LayerActivationDetector, ModelInputDetector, ModelOutputDetector
from mi_crow.hooks.hook import Controller, Detector, Hook, HookError, HookType, StopForward
from mi_crow.hooks.manager import HookHandle, HookManager

# The hook kinds a request may attach by name (the seed's "list hooks" endpoint).
HOOK_KINDS: dict[str, type[Hook]] = {
    cls.kind: cls
    for cls in (LayerActivationDetector, ModelInputDetector, ModelOutputDetector, NeuronMultiplierController)
}

__all__ = [
    "HOOK_KINDS",
    "Controller",
    "Detector",
    "FunctionController",
    "Hook",
    "HookError",
    "HookHandle",
    "HookManager",
    "HookType",
    "LayerActivationDetector",
    "ModelInputDetector",
    "ModelOutputDetector",
    "NeuronMultiplierController",
    "StopForward",
]
