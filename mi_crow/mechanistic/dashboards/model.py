"""The dashboard data: what a reader of one SAE latent wants to see, as plain JSON-able dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Example:
    """One token where a latent fired, with the tokens around it and the latent's value on each."""

    sample: int  # index of the text in dataset order
    position: int  # position of the activating token in its text
    activation: float  # the latent's value on that token
    tokens: list[str]  # decoded token strings of the window
    acts: list[float]  # the latent's value on each token of the window
    center: int  # index of the activating token within ``tokens``

    def text(self) -> str:
        return "".join(self.tokens)


@dataclass
class QuantileBin:
    """Examples whose activation lies in ``[lo, hi]``, one interval of the latent's non-zero values."""

    lo: float
    hi: float
    examples: list[Example]


@dataclass
class LatentCard:
    latent: int
    density: float  # fraction of the tokens seen on which the latent is non-zero
    n_fired: int  # tokens on which it is non-zero
    max_activation: float
    mean_activation: float  # mean over the tokens where it fired
    top_examples: list[Example]
    quantiles: list[QuantileBin]
    promoted: list[tuple[str, float]]  # tokens whose logits the decoder direction raises most, with the rise
    suppressed: list[tuple[str, float]]  # tokens it lowers most
    neighbours: list[tuple[int, float]]  # (latent, decoder cosine), most similar first

    @property
    def top_token(self) -> str:
        return self.top_examples[0].tokens[self.top_examples[0].center] if self.top_examples else ""


@dataclass
class Dashboard:
    sae_id: str | None
    model_id: str | None
    layer: str | None
    n_latents: int
    n_tokens: int  # tokens seen (padding excluded)
    n_texts: int
    n_fired_latents: int  # latents that fired at least once on the tokens seen
    latents: dict[int, LatentCard]  # the latents shown, densest first
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # caveats (e.g. why no logit effects were computed)

    def __getitem__(self, latent: int) -> LatentCard:
        return self.latents[int(latent)]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latents"] = [asdict(card) for card in self.latents.values()]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Dashboard:
        def example(e: dict[str, Any]) -> Example:
            return Example(**e)

        cards = {}
        for c in data["latents"]:
            cards[int(c["latent"])] = LatentCard(
                latent=int(c["latent"]),
                density=float(c["density"]),
                n_fired=int(c["n_fired"]),
                max_activation=float(c["max_activation"]),
                mean_activation=float(c["mean_activation"]),
                top_examples=[example(e) for e in c["top_examples"]],
                quantiles=[QuantileBin(q["lo"], q["hi"], [example(e) for e in q["examples"]]) for q in c["quantiles"]],
                promoted=[(str(t), float(v)) for t, v in c["promoted"]],
                suppressed=[(str(t), float(v)) for t, v in c["suppressed"]],
                neighbours=[(int(i), float(v)) for i, v in c["neighbours"]],
            )
        fields = {k: v for k, v in data.items() if k != "latents"}
        return cls(latents=cards, **fields)
