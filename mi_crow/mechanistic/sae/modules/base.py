"""``Sae``: the common shape of every SAE variant, built around an ``overcomplete`` model.

The overcomplete model holds the encoder and the (unit-norm) dictionary. Around it we add what language
model activations need: a fixed input scale (so one set of hyperparameters fits layers of any norm) and a
learned decoder bias ``b_dec`` subtracted before encoding (residual streams have a large mean).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from mi_crow.store.atomic import atomic_write_bytes, atomic_write_json

WEIGHTS_FILE = "sae.safetensors"
META_FILE = "sae.json"


@dataclass
class SaeOutput:
    x_hat: torch.Tensor  # reconstruction, in input units
    pre_codes: torch.Tensor  # encoder output before the sparsifying activation
    codes: torch.Tensor | None = None  # dense codes (None when only the top-k are kept)
    top_values: torch.Tensor | None = None  # (N, k) for TopK
    top_indices: torch.Tensor | None = None  # (N, k) for TopK

    def dense_codes(self) -> torch.Tensor:
        if self.codes is not None:
            return self.codes
        assert self.top_values is not None and self.top_indices is not None
        out = torch.zeros_like(self.pre_codes)
        return out.scatter_(-1, self.top_indices, self.top_values)

    def active_mask(self) -> torch.Tensor:
        """(n_latents,) bool: which latents fired on any row of the batch."""
        if self.codes is not None:
            return (self.codes > 0).any(0)
        assert self.top_values is not None and self.top_indices is not None
        fired = torch.zeros(self.pre_codes.shape[-1], dtype=torch.bool, device=self.pre_codes.device)
        fired[self.top_indices[self.top_values > 0]] = True
        return fired

    def l0(self) -> torch.Tensor:
        """Mean number of active latents per row."""
        if self.codes is not None:
            return (self.codes > 0).float().sum(-1).mean()
        assert self.top_values is not None
        return (self.top_values > 0).float().sum(-1).mean()


class Sae(nn.Module):
    """Base class of all SAE variants. Subclasses build ``self.net`` and define ``sparsify``/``penalty``."""

    registry: ClassVar[dict[str, type[Sae]]] = {}
    # Tied init suits variants with a fixed number of active latents; with dense ReLU codes it would make
    # every latent fire at once and overshoot.
    tied_init: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Sae.registry[cls.__name__] = cls

    def __init__(self, d_in: int, n_latents: int, **_: Any) -> None:
        super().__init__()
        if d_in <= 0 or n_latents <= 0:
            raise ValueError(f"d_in and n_latents must be positive, got {d_in} and {n_latents}")
        self.d_in = d_in
        self.n_latents = n_latents
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.net: nn.Module = self.build_net()
        if self.tied_init:
            self._tie_encoder_init()
        # Identity, provenance and training record; filled by the trainer and saved in sae.json.
        self.sae_id: str | None = None
        self.layer: str | None = None
        self.model_id: str | None = None
        self.training_record: dict[str, Any] = {}

    # -- to be provided by variants ------------------------------------------------------------------
    def build_net(self) -> nn.Module:
        raise NotImplementedError

    def hparams(self) -> dict[str, Any]:
        """Constructor arguments beyond d_in and n_latents, saved so ``load`` rebuilds the same SAE."""
        return {}

    def sparsify(self, pre_codes: torch.Tensor) -> SaeOutput:
        """Codes from pre-activations; returns an SaeOutput without x_hat (filled by ``forward``)."""
        raise NotImplementedError

    def penalty(self, out: SaeOutput, step_fraction: float) -> torch.Tensor | None:
        """Sparsity penalty added to the reconstruction loss (None for variants that need none)."""
        return None

    def loss(self, x: torch.Tensor, out: SaeOutput, step_fraction: float) -> dict[str, torch.Tensor]:
        """Training objective for a flat ``(N, d_in)`` batch: ``"loss"`` is minimized, ``"mse"`` is reported.

        Errors are measured in normalized units (``x * input_scale``) so one learning rate fits layers of
        any norm. ``step_fraction`` runs from 0 to 1 over the sparsity warmup (and past 1 afterwards).
        Variants with another objective (e.g. Matryoshka's nested reconstructions) override this.
        """
        mse = self.normalized_mse(x, out.x_hat)
        terms = {"mse": mse, "loss": mse}
        penalty = self.penalty(out, step_fraction)
        if penalty is not None:
            terms["penalty"] = penalty
            terms["loss"] = mse + penalty
        return terms

    def aux_loss(self, x: torch.Tensor, out: SaeOutput, dead: torch.Tensor, k_aux: int) -> torch.Tensor | None:
        """Auxiliary loss that gives ``dead`` (bool, per latent) latents a gradient; None if not used."""
        return None

    def normalized_mse(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        return ((x_hat.float() - x.float()) * self.input_scale).pow(2).mean()

    # -- decoder norm ------------------------------------------------------------------------------
    # Every variant keeps unit-norm decoder rows, rather than weighting an L1 penalty by the row norms:
    # with fixed norms a code's size is its contribution to the reconstruction, so TopK selection,
    # BatchTopK/JumpReLU thresholds and the L1 penalty all compare like with like, and no latent can
    # dodge the L1 penalty by shrinking its code while growing its row. overcomplete's DictionaryLayer
    # renormalizes the rows when it reads them in training; the trainer also projects the row-parallel
    # part out of the gradient before each step and renormalizes right after it (Gao et al.), so the
    # stored weights are unit norm at every checkpoint and Adam's moments never chase a norm change.
    def _decoder_weights(self) -> nn.Parameter:
        return self.net.dictionary._weights

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        w = self._decoder_weights()
        if w.grad is None:
            return
        unit = w / w.norm(dim=1, keepdim=True).clamp_min(1e-8)
        w.grad.sub_((w.grad * unit).sum(dim=1, keepdim=True) * unit)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        w = self._decoder_weights()
        w.div_(w.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def _tie_encoder_init(self) -> None:
        # Start the encoder as the decoder's transpose (Gao et al.): each latent first detects its own
        # direction, so reconstruction is sensible from step 0 instead of worse than the mean.
        linear = getattr(getattr(self.net, "encoder", None), "final_block", [None])[0]
        if isinstance(linear, nn.Linear) and linear.weight.shape == (self.n_latents, self.d_in):
            weights = self.net.dictionary._weights
            weights.copy_(weights / weights.norm(dim=1, keepdim=True).clamp_min(1e-8))
            linear.weight.copy_(weights)
            if linear.bias is not None:
                linear.bias.zero_()

    # -- the shared computation ----------------------------------------------------------------------
    @property
    def id(self) -> str | None:
        return self.sae_id

    @property
    def dictionary(self) -> torch.Tensor:
        """(n_latents, d_in) decoder directions, in normalized input units."""
        return self.net.get_dictionary()

    def encoder_pre(self, x: torch.Tensor) -> torch.Tensor:
        u = x.to(self.b_dec.dtype) * self.input_scale - self.b_dec
        pre, _ = self.net.encoder(u)
        return pre

    def decode_raw(self, out: SaeOutput) -> torch.Tensor:
        """Decoder output in normalized units, without the bias."""
        return out.dense_codes() @ self.dictionary

    def forward(self, x: torch.Tensor) -> SaeOutput:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if flat.shape[-1] != self.d_in:
            raise ValueError(f"SAE expects inputs of width {self.d_in}, got {flat.shape[-1]}")
        out = self.sparsify(self.encoder_pre(flat))
        u_hat = self.decode_raw(out) + self.b_dec
        out.x_hat = (u_hat / self.input_scale).to(x.dtype).reshape(shape)
        return out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense sparse codes, shape ``(*x.shape[:-1], n_latents)``."""
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[-1] != self.d_in:
            raise ValueError(f"SAE expects inputs of width {self.d_in}, got {flat.shape[-1]}")
        codes = self.sparsify(self.encoder_pre(flat)).dense_codes()
        return codes.reshape(*x.shape[:-1], self.n_latents)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        flat = codes.reshape(-1, self.n_latents).to(self.b_dec.dtype)
        u_hat = flat @ self.dictionary + self.b_dec
        return (u_hat / self.input_scale).reshape(*codes.shape[:-1], self.d_in)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Data-aware start: unit mean-squared norm per dimension and ``b_dec`` at the data mean."""
        x = x.reshape(-1, self.d_in).to(self.b_dec.dtype)
        norm = x.norm(dim=-1).mean().clamp_min(1e-8)
        self.input_scale.fill_(float(self.d_in**0.5 / norm))
        self.b_dec.copy_((x * self.input_scale).mean(0))

    def _apply(self, fn: Any, recurse: bool = True) -> Sae:
        # overcomplete caches a fused dictionary in eval mode; keep it on the new device/dtype.
        super()._apply(fn, recurse)
        self.refresh()
        return self

    def refresh(self) -> None:
        """Re-fuse overcomplete's eval-mode dictionary after weights changed outside ``train()``."""
        if not self.training:
            self.net.dictionary.train(False)

    # -- persistence ---------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {
            "sae_class": type(self).__name__,
            "d_in": self.d_in,
            "n_latents": self.n_latents,
            "hparams": self.hparams(),
            "sae_id": self.sae_id,
            "layer": self.layer,
            "model_id": self.model_id,
            "created_at": self.training_record.get("finished_at", time.time()),
            "training": self.training_record,
            "format_version": 1,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``sae.safetensors`` and ``sae.json`` (each atomically) into ``directory``."""
        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_FILE, st_save(state, metadata={"sae_class": type(self).__name__}))
        atomic_write_json(directory / META_FILE, self.metadata())
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> Sae:
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"no SAE at {directory} (missing {META_FILE})")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        name = meta["sae_class"]
        if name not in Sae.registry:
            raise ValueError(f"unknown SAE class {name!r} in {meta_path}; known: {sorted(Sae.registry)}")
        sae_cls = Sae.registry[name]
        if cls is not Sae and not issubclass(sae_cls, cls):
            raise TypeError(f"{meta_path} holds a {name}, not a {cls.__name__}")
        sae = sae_cls(meta["d_in"], meta["n_latents"], **meta.get("hparams", {}))
        try:
            state = st_load((directory / WEIGHTS_FILE).read_bytes())
        except Exception as exc:
            raise ValueError(f"SAE weights at {directory / WEIGHTS_FILE} are unreadable: {exc}") from exc
        for key, tensor in state.items():
            if not torch.isfinite(tensor).all():
                raise ValueError(f"SAE weights at {directory} hold non-finite values in {key!r}")
        sae.load_state_dict(state)
        sae.sae_id, sae.layer, sae.model_id = meta.get("sae_id"), meta.get("layer"), meta.get("model_id")
        sae.training_record = meta.get("training", {})
        sae.to(device)
        sae.eval()
        return sae
