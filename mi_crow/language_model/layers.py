"""Architecture-agnostic layer names: every module addressable by a stable string.

A module at ``transformer.h.0.attn.c_attn`` is named ``transformer_h_0_attn_c_attn`` (the seed README's
form); the dotted path is accepted too. Names depend only on the module tree, so they are the same on
every load of the same architecture.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from mi_crow.language_model.errors import UnknownLayerError


def layer_name(path: str) -> str:
    return path.replace(".", "_")


@dataclass(frozen=True)
class LayerInfo:
    name: str  # stable name, e.g. transformer_h_0_attn_c_attn
    path: str  # dotted module path, e.g. transformer.h.0.attn.c_attn
    type: str  # module class name
    output_shape: tuple[int, ...] | None  # shape seen on a (1, probe_len) input; None if not a tensor / not run
    hidden_size: int | None  # last dimension of that output: the d_model an SAE on this layer needs

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "path": self.path,
            "type": self.type,
            "output_shape": list(self.output_shape) if self.output_shape else None,
            "hidden_size": self.hidden_size,
        }


class LayerRegistry:
    """Maps stable names (and dotted paths) to modules of one model."""

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self._modules: dict[str, tuple[str, nn.Module]] = {}
        self._paths: dict[str, str] = {}
        for path, module in root.named_modules():
            if not path:
                continue
            name = layer_name(path)
            if name in self._modules:  # two paths flatten to one name: keep the first, reach the other by path
                self._paths[path] = name + "@" + path
                self._modules[name + "@" + path] = (path, module)
                continue
            self._modules[name] = (path, module)
            self._paths[path] = name
        self._shapes: dict[str, tuple[int, ...]] | None = None

    def names(self) -> list[str]:
        return list(self._modules)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._modules or name in self._paths)

    def resolve(self, name: str) -> tuple[str, nn.Module]:
        """Return ``(stable name, module)`` for a stable name or a dotted path."""
        if name in self._modules:
            return name, self._modules[name][1]
        if name in self._paths:
            stable = self._paths[name]
            return stable, self._modules[stable][1]
        close = difflib.get_close_matches(name, self.names(), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; the model has {len(self._modules)} layers"
        raise UnknownLayerError(f"unknown layer {name!r}{hint} (lm.layers() lists them all)")

    def path(self, name: str) -> str:
        stable, _ = self.resolve(name)
        return self._modules[stable][0]

    def order(self, names: list[str]) -> list[str]:
        """Stable names sorted by module definition order (roughly execution order)."""
        position = {n: i for i, n in enumerate(self._modules)}
        return sorted((self.resolve(n)[0] for n in names), key=position.__getitem__)

    def probe_shapes(self, run: callable) -> dict[str, tuple[int, ...]]:  # type: ignore[valid-type]
        """Record every module's output shape during one call of ``run`` (a tiny forward)."""
        if self._shapes is not None:
            return self._shapes
        shapes: dict[str, tuple[int, ...]] = {}
        handles = []

        def make(name: str):
            def hook(module: nn.Module, args: tuple, output: object) -> None:
                t = output
                if isinstance(t, tuple | list) and t:
                    t = t[0]
                elif isinstance(t, dict) and t:
                    t = next(iter(t.values()))
                if isinstance(t, torch.Tensor) and name not in shapes:
                    shapes[name] = tuple(t.shape)

            return hook

        try:
            for name, (_, module) in self._modules.items():
                handles.append(module.register_forward_hook(make(name)))
            run()
        finally:
            for h in handles:
                h.remove()
        self._shapes = shapes
        return shapes

    def infos(self, shapes: dict[str, tuple[int, ...]] | None = None) -> list[LayerInfo]:
        shapes = shapes or {}
        out = []
        for name, (path, module) in self._modules.items():
            shape = shapes.get(name)
            out.append(
                LayerInfo(
                    name=name,
                    path=path,
                    type=type(module).__name__,
                    output_shape=shape,
                    hidden_size=shape[-1] if shape else None,
                )
            )
        return out
