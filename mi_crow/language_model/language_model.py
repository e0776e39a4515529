"""``LanguageModel``: one object for a causal LM, its tokenizer, its named layers and its hooks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

from mi_crow.allocator import tune_for_large_buffers
from mi_crow.hooks import Controller, HookManager
from mi_crow.language_model.aliases import resolve_alias
from mi_crow.language_model.layers import LayerInfo, LayerRegistry
from mi_crow.language_model.loading import load_causal_lm
from mi_crow.language_model.outputs import ForwardOutput, GenerationOutput
from mi_crow.store import ActivationRun, LocalStore

if TYPE_CHECKING:
    from mi_crow.language_model.harvest import HarvestBatch
    from mi_crow.mechanistic.concepts import Concepts

_PROBE_TEXT = "mi crow probe text"


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    # Batching needs a pad id; padded positions are masked out everywhere, so reusing EOS is harmless.
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise ValueError("the tokenizer has no pad, eos or unk token to pad batches with")


class LanguageModel:
    """A HuggingFace causal LM with stable layer names, hooks, harvesting and concept steering.

    ``model_id`` may be a hub id, a local directory or an alias (see ``mi_crow.language_model.aliases``).
    Pass ``model``/``tokenizer`` instead to wrap objects already in memory.
    """

    def __init__(
        self,
        model_id: str | None = None,
        *,
        model: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        store: LocalStore | str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        device_map: str | dict[str, Any] | None = None,
        local_files_only: bool | None = None,
        trust_remote_code: bool = False,
        aliases: Mapping[str, str] | None = None,
        max_length: int | None = None,
    ) -> None:
        tune_for_large_buffers()  # harvest batches and shards are multi-MiB buffers, allocated per batch
        if model is None:
            if not model_id:
                raise ValueError("give a model_id (hub id, local directory or alias) or a loaded model")
            loaded = load_causal_lm(
                resolve_alias(model_id, aliases),
                device=device,
                dtype=dtype,
                device_map=device_map,
                local_files_only=local_files_only,
                trust_remote_code=trust_remote_code,
            )
            model, tokenizer, self.source = loaded.model, loaded.tokenizer, loaded.source
        else:
            if tokenizer is None:
                raise ValueError("a tokenizer is required with an in-memory model")
            self.source = model_id or getattr(model.config, "_name_or_path", "") or type(model).__name__
            model.eval()
        self.model_id: str = model_id or self.source
        self.model: PreTrainedModel = model
        self.tokenizer: PreTrainedTokenizerBase = tokenizer
        _ensure_pad_token(self.tokenizer)
        self.store = store if isinstance(store, LocalStore) else LocalStore(store)
        self.layer_registry = LayerRegistry(model)
        self.hooks = HookManager(self.layer_registry)
        self.max_length = max_length or self._context_length()

    @classmethod
    def from_huggingface(
        cls, model_id: str, store: LocalStore | str | Path | None = None, **kwargs: Any
    ) -> LanguageModel:
        """The seed release's constructor, kept for its users."""
        return cls(model_id, store=store, **kwargs)

    def __repr__(self) -> str:
        return f"LanguageModel({self.model_id!r}, {type(self.model).__name__}, device={self.device})"

    # -- basics --------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _context_length(self) -> int:
        cfg = self.model.config
        limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
        tok_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_limit, int) and 0 < tok_limit < limit:
            limit = tok_limit
        return int(limit)

    def tokenize(
        self, texts: Sequence[str], *, padding_side: str = "right", max_length: int | None = None
    ) -> BatchEncoding:
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not a single string")
        if not texts:
            raise ValueError("no texts given")
        self.tokenizer.padding_side = padding_side
        enc = self.tokenizer(
            list(texts),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length or self.max_length,
        )
        return enc.to(self.device)

    # -- layers --------------------------------------------------------------------------------------
    def layers(self) -> list[LayerInfo]:
        """Every addressable layer with its type and the output shape seen on a short probe input."""

        def probe() -> None:
            enc = self.tokenize([_PROBE_TEXT])
            with self.hooks.paused(), torch.inference_mode():
                self.model(**enc, use_cache=False)

        return self.layer_registry.infos(self.layer_registry.probe_shapes(probe))

    def layer_names(self) -> list[str]:
        return self.layer_registry.names()

    def resolve_layer(self, name: str) -> str:
        return self.layer_registry.resolve(name)[0]

    def layer_info(self, name: str) -> LayerInfo:
        stable = self.resolve_layer(name)
        return next(info for info in self.layers() if info.name == stable)

    def hidden_size(self, layer: str) -> int:
        info = self.layer_info(layer)
        if info.hidden_size is None:
            raise ValueError(f"layer {info.name!r} ({info.type}) produces no tensor output to harvest")
        return info.hidden_size

    # -- running -------------------------------------------------------------------------------------
    @contextmanager
    def _controls(self, with_controllers: bool, concept_config: Concepts | None) -> Iterator[None]:
        with ExitStack() as stack:
            if not with_controllers:
                stack.enter_context(self.hooks.controllers_disabled())
            elif concept_config is not None:
                controller: Controller = concept_config.controller()
                stack.enter_context(self.hooks.attached(controller))
            yield

    def forwards(
        self,
        texts: Sequence[str],
        *,
        with_controllers: bool = True,
        concept_config: Concepts | None = None,
        batch_size: int | None = None,
        max_length: int | None = None,
        output_hidden_states: bool = False,
    ) -> ForwardOutput:
        """Run the model on texts (right-padded) and return logits with the attention mask."""
        enc = self.tokenize(texts, max_length=max_length)
        n = enc["input_ids"].shape[0]
        step = batch_size or n
        logits: list[torch.Tensor] = []
        hidden: list[tuple[torch.Tensor, ...]] = []
        with self._controls(with_controllers, concept_config), torch.inference_mode():
            for start in range(0, n, step):
                chunk = {k: v[start : start + step] for k, v in enc.items()}
                out = self.model(**chunk, output_hidden_states=output_hidden_states, use_cache=False)
                logits.append(out.logits)
                if output_hidden_states:
                    hidden.append(out.hidden_states)
        hidden_states = tuple(torch.cat(h) for h in zip(*hidden, strict=True)) if output_hidden_states else None
        return ForwardOutput(
            logits=torch.cat(logits),
            attention_mask=enc["attention_mask"],
            input_ids=enc["input_ids"],
            hidden_states=hidden_states,
        )

    def generate(
        self,
        texts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        stop_strings: Sequence[str] | None = None,
        seed: int | None = None,
        with_controllers: bool = True,
        concept_config: Concepts | None = None,
    ) -> GenerationOutput:
        """Generate continuations (left-padded batch). Hooks and concept configs act at every step."""
        enc = self.tokenize(texts, padding_side="left")
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if do_sample:
            kwargs["temperature"] = temperature
            if top_k is not None:
                kwargs["top_k"] = top_k
            if top_p is not None:
                kwargs["top_p"] = top_p
        if repetition_penalty is not None:
            kwargs["repetition_penalty"] = repetition_penalty
        if stop_strings:
            kwargs["stop_strings"] = list(stop_strings)
            kwargs["tokenizer"] = self.tokenizer
        if seed is not None:
            torch.manual_seed(seed)
        with self._controls(with_controllers, concept_config), torch.inference_mode():
            sequences = self.model.generate(**enc, **kwargs)
        prompt_len = enc["input_ids"].shape[1]
        new_tokens = []
        stops = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id} - {None}
        for row in sequences[:, prompt_len:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            new_tokens.append(row[:cut])
        texts_out = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in new_tokens]
        return GenerationOutput(texts=texts_out, sequences=sequences, prompt_length=prompt_len, new_tokens=new_tokens)

    # -- workflows -----------------------------------------------------------------------------------
    def save_activations(self, dataset: Any, layers: Sequence[str], **kwargs: Any) -> ActivationRun:
        """Harvest activations of ``layers`` over ``dataset`` into the store; see ``harvest.save_activations``."""
        from mi_crow.language_model.harvest import save_activations

        return save_activations(self, dataset, layers, **kwargs)

    def stream_activations(self, dataset: Any, layers: Sequence[str], **kwargs: Any) -> Iterator[HarvestBatch]:
        """Harvest without storing, batch by batch; see ``harvest.stream_activations``."""
        from mi_crow.language_model.harvest import stream_activations

        return stream_activations(self, dataset, layers, **kwargs)

    def load_concepts(self, sae_id: str) -> Concepts:
        """The concepts of a stored SAE: its dictionary, default config and steering controls."""
        from mi_crow.mechanistic.concepts import Concepts

        return Concepts.load(self, sae_id)
