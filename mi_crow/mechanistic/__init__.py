"""SAE training and concept discovery/steering."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy, so importing one subpackage does not import (or cycle through) the others.
    if name in ("evaluate_sae", "EvalReport"):
        from mi_crow.mechanistic import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
