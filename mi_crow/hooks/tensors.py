"""Finding the tensor a hook acts on inside whatever a module takes or returns, and putting it back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Rebuild = Callable[[torch.Tensor], Any]


def split_output(output: Any) -> tuple[torch.Tensor | None, Rebuild]:
    """The primary tensor of a module output (a tensor, a tuple/list led by one, or a ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output, lambda t: t
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        rest = output[1:]
        if isinstance(output, list):
            return output[0], lambda t: [t, *rest]
        if type(output) is tuple:
            return output[0], lambda t: (t, *rest)
        return output[0], lambda t: type(output)(t, *rest)  # namedtuple
    if isinstance(output, dict) and output:  # transformers ModelOutput is an OrderedDict
        key = next(iter(output))
        value = output[key]
        if isinstance(value, torch.Tensor):

            def rebuild(t: torch.Tensor) -> Any:
                output[key] = t
                if type(output) is not dict and hasattr(output, key):  # ModelOutput mirrors keys as attributes
                    setattr(output, key, t)
                return output

            return value, rebuild
    return None, lambda t: output


def split_inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[torch.Tensor | None, Callable[[torch.Tensor], tuple]]:
    """The primary input tensor: the first positional tensor, else ``hidden_states``/first tensor kwarg."""
    for i, arg in enumerate(args):
        if isinstance(arg, torch.Tensor):
            return arg, lambda t, i=i: ((*args[:i], t, *args[i + 1 :]), kwargs)
    keys = ["hidden_states", "input_ids", "inputs_embeds"] + [k for k in kwargs if k not in ("hidden_states",)]
    for key in keys:
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor):
            return value, lambda t, key=key: (args, {**kwargs, key: t})
    return None, lambda t: (args, kwargs)
