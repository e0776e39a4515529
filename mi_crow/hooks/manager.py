"""``HookManager``: attaches hooks to named layers and guarantees they come off again.

One PyTorch handle per (module, hook type) dispatches to every mi-crow hook on that layer in attach order,
so a layer can hold detectors and controllers at once, and removing the last hook removes the handle.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from mi_crow.hooks.hook import Controller, Detector, Hook, HookError, HookType, check_replacement
from mi_crow.hooks.tensors import split_inputs, split_output


class LayerResolver(Protocol):
    root: nn.Module

    def resolve(self, name: str) -> tuple[str, nn.Module]: ...


class _Slot:
    """The hooks of one (module, hook type) and the single torch handle that runs them."""

    def __init__(self, layer: str, module: nn.Module, hook_type: HookType) -> None:
        self.layer = layer
        self.module = module
        self.hook_type = hook_type
        self.hooks: list[Hook] = []
        if hook_type is HookType.FORWARD:
            self.handle: RemovableHandle = module.register_forward_hook(self._on_forward, with_kwargs=True)
        else:
            self.handle = module.register_forward_pre_hook(self._on_pre_forward, with_kwargs=True)

    def _run(self, tensor: torch.Tensor, context: dict[str, Any]) -> torch.Tensor | None:
        changed = False
        for hook in list(self.hooks):
            if not hook.enabled:
                continue
            if isinstance(hook, Controller):
                tensor = check_replacement(hook, tensor, hook.modify(tensor, self.module, context))
                changed = True
            elif isinstance(hook, Detector):
                hook.observe(tensor, self.module, context)
        return tensor if changed else None

    def _on_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        primary, rebuild = split_output(output)
        if primary is None:
            raise HookError(f"layer {self.layer!r} returned {type(output).__name__}, which holds no tensor to hook")
        new = self._run(primary, {"args": args, "kwargs": kwargs, "layer": self.layer})
        return None if new is None else rebuild(new)

    def _on_pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        primary, rebuild = split_inputs(args, kwargs)
        if primary is None:
            raise HookError(f"layer {self.layer!r} was called without a tensor input to hook")
        new = self._run(primary, {"args": args, "kwargs": kwargs, "layer": self.layer})
        return None if new is None else rebuild(new)


class HookHandle:
    """Returned by ``attach``; removes the hook on ``remove()`` or at the end of a ``with`` block."""

    def __init__(self, manager: HookManager, hook: Hook) -> None:
        self._manager = manager
        self.hook = hook

    def remove(self) -> None:
        self._manager.detach(self.hook)

    def __enter__(self) -> Hook:
        return self.hook

    def __exit__(self, *exc: object) -> None:
        self.remove()


class HookManager:
    def __init__(self, layers: LayerResolver) -> None:
        self._layers = layers
        self._slots: dict[tuple[str, HookType], _Slot] = {}
        self._where: dict[str, tuple[str, HookType]] = {}

    # -- attach / detach -----------------------------------------------------------------------------
    def attach(self, hook: Hook, layer: str | None = None) -> HookHandle:
        """Attach ``hook`` to ``layer`` (default: ``hook.layer``; ``None``/"" is the whole model)."""
        if hook.id in self._where:
            raise HookError(f"hook {hook.id!r} is already attached")
        target = layer if layer is not None else hook.layer
        if target in (None, ""):
            name, module = "", self._layers.root
        else:
            name, module = self._layers.resolve(target)
        hook.layer = name or None
        key = (name, hook.hook_type)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(name, module, hook.hook_type)
        slot.hooks.append(hook)
        self._where[hook.id] = key
        return HookHandle(self, hook)

    def detach(self, hook: Hook) -> None:
        key = self._where.pop(hook.id, None)
        if key is None:
            return
        slot = self._slots[key]
        slot.hooks = [h for h in slot.hooks if h.id != hook.id]
        if not slot.hooks:
            slot.handle.remove()
            del self._slots[key]

    def detach_all(self) -> None:
        for hook in self.hooks():
            self.detach(hook)

    @contextmanager
    def attached(self, *hooks: Hook) -> Iterator[tuple[Hook, ...]]:
        """Attach hooks for the duration of a block; they are removed even if the block raises."""
        handles: list[HookHandle] = []
        try:
            for hook in hooks:
                handles.append(self.attach(hook))
            yield hooks
        finally:
            for handle in reversed(handles):
                handle.remove()

    # -- inspection and switching --------------------------------------------------------------------
    def hooks(self, layer: str | None = None) -> list[Hook]:
        out = [h for slot in self._slots.values() for h in slot.hooks]
        if layer is not None:
            name = "" if layer == "" else self._layers.resolve(layer)[0]
            out = [h for h in out if (h.layer or "") == name]
        return out

    def detectors(self) -> list[Detector]:
        return [h for h in self.hooks() if isinstance(h, Detector)]

    def controllers(self) -> list[Controller]:
        return [h for h in self.hooks() if isinstance(h, Controller)]

    def get(self, hook_id: str) -> Hook:
        for hook in self.hooks():
            if hook.id == hook_id:
                return hook
        raise KeyError(f"no hook {hook_id!r} is attached")

    def enable_all(self, kind: type[Hook] = Hook) -> None:
        for hook in self.hooks():
            if isinstance(hook, kind):
                hook.enable()

    def disable_all(self, kind: type[Hook] = Hook) -> None:
        for hook in self.hooks():
            if isinstance(hook, kind):
                hook.disable()

    @contextmanager
    def switched_off(self, kind: type[Hook] = Hook) -> Iterator[None]:
        """Turn every enabled hook of ``kind`` off for a block, restoring exactly the previous states."""
        switched = [h for h in self.hooks() if isinstance(h, kind) and h.enabled]
        for h in switched:
            h.disable()
        try:
            yield
        finally:
            for h in switched:
                h.enable()

    def controllers_disabled(self) -> AbstractContextManager[None]:
        """``with_controllers=False``: every controller off for a block."""
        return self.switched_off(Controller)

    def paused(self) -> AbstractContextManager[None]:
        """Every hook off for a block (e.g. an internal probe forward)."""
        return self.switched_off(Hook)

    def torch_handle_count(self) -> int:
        """How many PyTorch hook handles mi-crow holds (0 when nothing is attached)."""
        return len(self._slots)
