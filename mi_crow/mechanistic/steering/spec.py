"""``Steering``: which latents of which SAEs to change, and how, validated before anything runs.

An edit names an SAE, the layer it acts on (default: the SAE's own), a latent and a mode:

- ``scale``: multiply the latent's code by ``value`` inside the SAE, keeping its reconstruction error;
- ``add``: add ``value`` times the latent's decoder direction (model units) at every position, which is
  what raising the latent's code by ``value`` would add;
- ``ablate``: set the latent's code to zero inside the SAE (``value`` is ignored).

Several SAEs on several layers may be steered at once; each (SAE, layer) becomes one hook controller.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from mi_crow.mechanistic.sae.modules import Sae
from mi_crow.mechanistic.steering.controller import SaeEditController

if TYPE_CHECKING:
    from mi_crow.language_model import LanguageModel


class SteeringMode(StrEnum):
    SCALE = "scale"
    ADD = "add"
    ABLATE = "ablate"


@dataclass(frozen=True)
class SteeringEdit:
    sae: Sae
    layer: str | None  # None: the layer the SAE was trained on
    latent: int
    mode: SteeringMode = SteeringMode.SCALE
    value: float = 1.0

    def describe(self) -> str:
        return f"{self.mode.value} latent {self.latent} of SAE {self.sae.sae_id or '<unsaved>'!r}"


def _mode(mode: Any) -> SteeringMode:
    try:
        return SteeringMode(str(getattr(mode, "value", mode)).lower())
    except ValueError:
        raise ValueError(f"unknown steering mode {mode!r}; use one of {[m.value for m in SteeringMode]}") from None


def _problems(edit: SteeringEdit) -> list[str]:
    problems = []
    if not isinstance(edit.sae, Sae):
        return [f"{type(edit.sae).__name__} is not an SAE"]
    latent = edit.latent
    if not isinstance(latent, int) or isinstance(latent, bool):
        problems.append(f"latent {latent!r} is not an integer")
    elif not 0 <= latent < edit.sae.n_latents:
        problems.append(
            f"latent {latent} out of range 0..{edit.sae.n_latents - 1} of SAE {edit.sae.sae_id or '<unsaved>'!r}"
        )
    try:
        finite = math.isfinite(float(edit.value))
    except (TypeError, ValueError):
        finite = False
    if not finite:
        problems.append(f"value {edit.value!r} is not a finite number")
    return problems


def _raise(problems: list[str]) -> None:
    if problems:
        raise ValueError(f"{len(problems)} bad steering edit(s): " + "; ".join(problems))


class Steering:
    """An ordered list of ``SteeringEdit``s; ``with steering.applied(lm):`` runs the model steered."""

    def __init__(self, edits: Iterable[SteeringEdit | tuple[Any, ...]] = ()) -> None:
        self.edits: list[SteeringEdit] = []
        for edit in edits:
            if isinstance(edit, SteeringEdit):
                self.edit(edit.sae, edit.latent, edit.mode, edit.value, layer=edit.layer)
            else:  # (sae, layer, latent, mode, value)
                sae, layer, latent, mode, value = edit
                self.edit(sae, latent, mode, value, layer=layer)

    # -- building --------------------------------------------------------------------------------------
    def edit(
        self, sae: Sae, latent: int, mode: SteeringMode | str = "scale", value: float = 1.0, *, layer: str | None = None
    ) -> Steering:
        """Append one edit after checking it against the SAE and the edits already there."""
        kind = _mode(mode)
        if not isinstance(latent, bool):
            with suppress(TypeError):
                latent = operator.index(latent)  # numpy and torch integers too
        edit = SteeringEdit(sae, layer or None, latent, kind, 0.0 if kind is SteeringMode.ABLATE else value)
        problems = _problems(edit)
        if not problems:
            clash = self._clash(edit)
            if clash:
                problems.append(clash)
        _raise([f"{edit.describe()}: {p}" for p in problems])
        self.edits.append(replace(edit, value=float(edit.value)))
        return self

    def scale(self, sae: Sae, latent: int, factor: float, *, layer: str | None = None) -> Steering:
        return self.edit(sae, latent, SteeringMode.SCALE, factor, layer=layer)

    def add(self, sae: Sae, latent: int, alpha: float, *, layer: str | None = None) -> Steering:
        return self.edit(sae, latent, SteeringMode.ADD, alpha, layer=layer)

    def ablate(self, sae: Sae, latent: int, *, layer: str | None = None) -> Steering:
        return self.edit(sae, latent, SteeringMode.ABLATE, 0.0, layer=layer)

    def _clash(self, new: SteeringEdit) -> str | None:
        # A latent's code can be set one way only; an addition on top of it is a separate, single edit.
        coded = {SteeringMode.SCALE, SteeringMode.ABLATE}
        for old in self.edits:
            if old.sae is not new.sae or old.latent != new.latent or old.layer != new.layer:
                continue
            if old.mode == new.mode or (old.mode in coded and new.mode in coded):
                return f"latent {new.latent} is already edited ({old.mode.value}); give one edit per latent and mode"
        return None

    # -- inspection ------------------------------------------------------------------------------------
    @property
    def is_empty(self) -> bool:
        return not self.edits

    def __len__(self) -> int:
        return len(self.edits)

    def __iter__(self) -> Iterator[SteeringEdit]:
        return iter(self.edits)

    def __repr__(self) -> str:
        return f"Steering({[e.describe() + f' = {e.value:g}' for e in self.edits]})"

    # -- running ---------------------------------------------------------------------------------------
    def layers(self, lm: LanguageModel) -> list[str]:
        """Each edit's stable layer name; ValueError listing every edit whose layer does not fit its SAE."""
        problems: list[str] = []
        names: list[str] = []
        widths: dict[str, int] = {}
        for i, edit in enumerate(self.edits):
            own = edit.sae.layer
            if not (edit.layer or own):
                problems.append(f"edit {i} ({edit.describe()}): the SAE records no layer; name the layer")
                names.append("")
                continue
            layer = lm.resolve_layer(edit.layer or own)  # UnknownLayerError names close matches
            if edit.layer and own and lm.resolve_layer(own) != layer:
                problems.append(
                    f"edit {i} ({edit.describe()}): the SAE reads layer {lm.resolve_layer(own)!r}, not {layer!r}; "
                    "leave the layer empty to use the SAE's own"
                )
            else:
                width = widths[layer] = widths.get(layer) or lm.hidden_size(layer)
                if width != edit.sae.d_in:
                    problems.append(
                        f"edit {i} ({edit.describe()}): the SAE expects width {edit.sae.d_in} but layer {layer!r} "
                        f"has {width}"
                    )
            names.append(layer)
        _raise(problems)
        return names

    def controllers(self, lm: LanguageModel) -> list[SaeEditController]:
        """One controller per (SAE, layer), in order of first appearance."""
        groups: dict[tuple[int, str], dict[str, Any]] = {}
        for edit, layer in zip(self.edits, self.layers(lm), strict=True):
            fresh = {"sae": edit.sae, "layer": layer, "scales": {}, "adds": {}}
            group = groups.setdefault((id(edit.sae), layer), fresh)
            edits = group["adds"] if edit.mode is SteeringMode.ADD else group["scales"]  # ablate: scale 0
            if edit.latent in edits:  # the same layer named once by name and once left to the SAE
                raise ValueError(f"{edit.describe()}: latent {edit.latent} is already edited on layer {layer!r}")
            edits[edit.latent] = edit.value
        return [SaeEditController(**g) for g in groups.values()]

    @contextmanager
    def applied(self, lm: LanguageModel) -> Iterator[list[SaeEditController]]:
        """Attach the controllers for a block; they come off again however the block ends."""
        controllers = self.controllers(lm) if self.edits else []
        with lm.hooks.attached(*controllers):
            yield controllers


SteeringSpec = Steering
