"""``Concepts``: an SAE loaded for a model, with its concept dictionary, configs and steering."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mi_crow.mechanistic.concepts.config import ConceptConfig
from mi_crow.mechanistic.concepts.dictionary import Concept, ConceptDictionary
from mi_crow.mechanistic.concepts.steering import SaeSteeringController
from mi_crow.mechanistic.concepts.top_texts import TopTexts, collect_top_texts
from mi_crow.mechanistic.sae.modules import Sae
from mi_crow.store import validate_name

if TYPE_CHECKING:
    from mi_crow.language_model import LanguageModel

DICTIONARY_FILE = "dictionary.json"
TOP_TEXTS_FILE = "top_texts.json"
DEFAULT_CONFIG = "default"


class Concepts:
    """What ``lm.load_concepts(sae_id)`` returns; pass it as ``concept_config=`` to steer."""

    def __init__(self, lm: LanguageModel, sae: Sae, sae_dir: Path) -> None:
        self.lm = lm
        self.sae = sae
        self.sae_dir = sae_dir
        if not sae.layer:
            raise ValueError(f"SAE {sae.sae_id!r} records no layer")
        layer = lm.resolve_layer(sae.layer)
        width = lm.hidden_size(layer)
        if width != sae.d_in:
            raise ValueError(
                f"SAE {sae.sae_id!r} expects d_model={sae.d_in} but layer {layer!r} of {lm.model_id!r} has {width}"
            )
        self.layer = layer
        self.dir = lm.store.concepts_dir(sae.model_id or lm.model_id, sae.sae_id or sae_dir.name)
        path = self.dir / DICTIONARY_FILE
        self.dictionary = (
            ConceptDictionary.load(path, sae.n_latents) if path.is_file() else ConceptDictionary(sae.n_latents)
        )
        default = self._config_path(DEFAULT_CONFIG)
        self.config = ConceptConfig.load(default, sae.n_latents) if default.is_file() else ConceptConfig(sae.n_latents)

    @classmethod
    def load(cls, lm: LanguageModel, sae_id: str) -> Concepts:
        sae_dir = lm.store.sae_dir(lm.model_id, sae_id)
        if not (sae_dir / "sae.json").is_file():
            sae_dir = lm.store.find_sae_dir(sae_id)
        return cls(lm, Sae.load(sae_dir, device=lm.device), sae_dir)

    @property
    def sae_id(self) -> str:
        return self.sae.sae_id or self.sae_dir.name

    @property
    def n_latents(self) -> int:
        return self.sae.n_latents

    # -- steering ------------------------------------------------------------------------------------
    def manipulate(self, neuron_idx: int, scale_factor: float, bias: float = 0.0) -> Concepts:
        """Scale (and shift) one latent whenever this object is passed as ``concept_config``."""
        self.config.set(neuron_idx, scale_factor, bias)
        return self

    def reset(self) -> Concepts:
        self.config = ConceptConfig(self.n_latents)
        return self

    def controller(self) -> SaeSteeringController:
        return SaeSteeringController(self.sae, self.config, self.layer)

    # -- configs -------------------------------------------------------------------------------------
    def _config_path(self, name: str) -> Path:
        return self.dir / "configs" / f"{validate_name(name, 'config name')}.json"

    def save_config(self, name: str = DEFAULT_CONFIG) -> Path:
        """Save the current edits; the config named ``default`` is what ``load_concepts`` starts from."""
        return self.config.save(self._config_path(name))

    def load_config(self, name: str) -> ConceptConfig:
        path = self._config_path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no concept config {name!r} for SAE {self.sae_id!r}; have {self.list_configs()}")
        self.config = ConceptConfig.load(path, self.n_latents)
        return self.config

    def preview(self, edits: dict[Any, Any]) -> ConceptConfig:
        """Validate and normalize edits without applying or saving them."""
        return ConceptConfig.from_edits(edits, self.n_latents)

    def list_configs(self) -> list[str]:
        return sorted(p.stem for p in (self.dir / "configs").glob("*.json"))

    # -- dictionary and top texts --------------------------------------------------------------------
    def name(self, latent: int, concept: str | Concept) -> None:
        self.dictionary.set(latent, concept)

    def load_dictionary(self, path: str | Path) -> ConceptDictionary:
        """Load names from JSON or CSV, validated against the SAE's latent count, and store them."""
        self.dictionary = ConceptDictionary.load(path, self.n_latents)
        self.save_dictionary()
        return self.dictionary

    def save_dictionary(self) -> Path:
        return self.dictionary.save(self.dir / DICTIONARY_FILE)

    def collect_top_texts(self, dataset: Any, *, k: int = 10, save: bool = True, **kwargs: Any) -> TopTexts:
        top = collect_top_texts(self.lm, self.sae, dataset, k=k, layer=self.layer, **kwargs)
        if save:
            top.save(self.dir / TOP_TEXTS_FILE)
        return top

    def top_texts(self) -> TopTexts | None:
        path = self.dir / TOP_TEXTS_FILE
        return TopTexts.load(path) if path.is_file() else None
