"""Measure mi-crow's harvest and SAE training throughput against plain PyTorch baselines, side by side.

Each row runs ours and the reference alternately in the same process (order flipped every repeat, so
drift in machine load or thermal state hits both sides alike) and reports medians. Timings are printed,
never asserted: a ratio below target is information, not a failure of the script.

    .venv/bin/python -m benchmarks.run [--quick] [--threads N] [--repeats N]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

OUT_DIR = Path(__file__).parent / "out"
LAYER = "transformer_h_1"
LAYER_INDEX = 1  # block index of LAYER in model.transformer.h
BATCH_SIZE = 32
D_IN = 768
SAE_BATCH = 4096
SAE_K = 32

# Words the tiny BPE tokenizer has merges for, so texts tokenize into realistic lengths.
_WORD_TEXT = (
    "the a of and to in is was for on with as by at from that this it his her their cat dog horse fox owl "
    "red blue green yellow rain snow wind bread cheese apple soup happy sad calm proud piano guitar violin "
    "garden kitchen river park school market station library field house anna ben clara david emma felix "
    "morning evening yesterday week noon sunday lunch walked saw found made took gave played sang ate "
    "quickly slowly quietly often never always very small large old new bright dark warm cold"
)
_WORDS = _WORD_TEXT.split()


@dataclass
class Row:
    name: str
    unit: str
    ours: float
    reference: float
    target: float
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.reference if self.reference else float("nan")


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{model}, {os.cpu_count()} logical CPUs, {gpu}, {platform.system()} {platform.release()}"


def pseudo_texts(n: int, seed: int = 0) -> list[str]:
    """Deterministic English-ish texts of 20-60 words: realistic token counts without any download."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 60))) + "." for _ in range(n)]


def alternate(sides: list[Callable[[], float]], repeats: int) -> list[list[float]]:
    """Run each side once untimed (warm-up), then ``repeats`` rounds; returns each side's rates.

    The order rotates every round, so drift in machine load (other processes, thermal state) and
    cache churn left by the previous side hit every side alike.
    """
    for side in sides:
        side()
    rates: list[list[float]] = [[] for _ in sides]
    for r in range(repeats):
        for j in range(len(sides)):
            i = (j + r) % len(sides)
            rates[i].append(sides[i]())
    return rates


# -- harvest ---------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by the trunk baseline's hook to end the forward after the harvested block."""


def bench_harvest(n_texts: int, repeats: int) -> list[Row]:
    from benchmarks.models import build_gpt2
    from mi_crow.language_model import LanguageModel
    from mi_crow.store import LocalStore

    texts = pseudo_texts(n_texts)
    with tempfile.TemporaryDirectory(prefix="mi_crow_bench_model_") as model_dir:
        build_gpt2(Path(model_dir))
        lm = LanguageModel(model_dir)
    batches = [texts[i : i + BATCH_SIZE] for i in range(0, len(texts), BATCH_SIZE)]
    n_tokens = sum(int(lm.tokenize(b)["attention_mask"].sum()) for b in batches)

    def ours() -> float:
        with tempfile.TemporaryDirectory(prefix="mi_crow_bench_store_") as tmp:
            t0 = time.perf_counter()
            lm.save_activations(texts, [LAYER], batch_size=BATCH_SIZE, progress=False, store=LocalStore(tmp))
            elapsed = time.perf_counter() - t0
        return n_tokens / elapsed

    def full() -> float:
        # What a user writes to run the model: tokenize, then a full forward that computes logits.
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                lm.model(**lm.tokenize(b), use_cache=False)
        return n_tokens / (time.perf_counter() - t0)

    def trunk() -> float:
        # The least work that yields the layer's output: the forward stops right after block LAYER_INDEX.
        def stop(*_: object) -> None:
            raise _Stop

        handle = lm.model.transformer.h[LAYER_INDEX].register_forward_hook(stop)
        try:
            t0 = time.perf_counter()
            with torch.inference_mode():
                for b in batches:
                    with contextlib.suppress(_Stop):
                        lm.model(**lm.tokenize(b), use_cache=False)
            return n_tokens / (time.perf_counter() - t0)
        finally:
            handle.remove()

    # One rotation of three sides: ours runs once per round and serves as numerator of both ratios.
    ours_r, full_r, trunk_r = (statistics.median(rates) for rates in alternate([ours, full, trunk], repeats))
    note = f"{len(texts)} texts, {n_tokens} tokens, batch {BATCH_SIZE}, layer {LAYER}"
    return [
        Row("harvest", "tok/s", ours_r, full_r, 0.95, note + "; ref: full forward"),
        Row("harvest-vs-trunk", "tok/s", ours_r, trunk_r, 0.9,
            note + f"; ref: forward stopped after block {LAYER_INDEX}"),
    ]  # fmt: skip


# -- SAE training ----------------------------------------------------------------------------------
class PlainTopK(nn.Module):
    """The textbook dense TopK SAE: encoder Linear, topk, scatter to dense codes, dense decoder matmul."""

    def __init__(self, d_in: int, n_latents: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.encoder = nn.Linear(d_in, n_latents)
        self.decoder = nn.Parameter(self.encoder.weight.detach().clone())  # tied init, as is common
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.encoder(x - self.b_dec)
        values, indices = torch.topk(pre, self.k, dim=-1, sorted=False)
        codes = torch.zeros_like(pre).scatter(-1, indices, F.relu(values))
        return codes @ self.decoder + self.b_dec


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0, keepdim=True)).pow(2).sum())


def bench_sae(n_vectors: int, n_latents: int, repeats: int) -> tuple[Row, str]:
    from mi_crow.mechanistic.sae import SaeTrainer, TopKSae
    from mi_crow.store import LocalStore

    gen = torch.Generator().manual_seed(0)
    data = torch.randn(n_vectors, D_IN, generator=gen)
    held_out = torch.randn(4096, D_IN, generator=gen)
    steps = math.ceil(n_vectors / SAE_BATCH)
    lr = 2e-4 / math.sqrt(n_latents / 16384)  # the trainer's default for this width, so both learn alike
    ev: dict[str, float] = {}

    def ours() -> float:
        hp = {"epochs": 1, "batch_size": SAE_BATCH, "k": SAE_K, "n_latents": n_latents, "log_every": 10**9}
        with tempfile.TemporaryDirectory(prefix="mi_crow_bench_sae_") as tmp:
            trainer = SaeTrainer(None, "x", TopKSae, hp, progress=False, store=LocalStore(tmp), model_id="bench")
            # Timed from train() to its return: includes init, per-step metrics and saving the SAE.
            t0 = time.perf_counter()
            sae = trainer.train(data)
            elapsed = time.perf_counter() - t0
        with torch.no_grad():
            ev["ours"] = explained_variance(held_out, sae(held_out).x_hat)
        return n_vectors / elapsed

    def ref() -> float:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        sae = PlainTopK(D_IN, n_latents, SAE_K)
        with torch.no_grad():
            sae.b_dec.copy_(data[:SAE_BATCH].mean(0))
        opt = torch.optim.Adam(sae.parameters(), lr=lr)
        order = torch.randperm(n_vectors)  # shuffled like the trainer's epoch
        for step in range(steps):
            x = data[order[step * SAE_BATCH : (step + 1) * SAE_BATCH]]
            loss = (sae(x) - x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        elapsed = time.perf_counter() - t0
        with torch.no_grad():
            ev["reference"] = explained_variance(held_out, sae(held_out))
        return n_vectors / elapsed

    ours_r, ref_r = alternate([ours, ref], repeats)
    note = f"{n_vectors} x {D_IN} -> {n_latents} latents, k {SAE_K}, batch {SAE_BATCH}, {steps} steps"
    ev_line = (
        f"held-out explained variance (random Gaussian data, low for both by design): "
        f"ours {ev['ours']:.4f}, reference {ev['reference']:.4f}"
    )
    return Row("sae-train", "vec/s", statistics.median(ours_r), statistics.median(ref_r), 1.0, note), ev_line


# -- report ----------------------------------------------------------------------------------------
def table(rows: list[Row]) -> list[str]:
    lines = [
        "| row | ours | reference | ratio | target | pass |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        mark = "yes" if r.ratio >= r.target else "NO"
        lines.append(
            f"| {r.name} | {r.ours:,.0f} {r.unit} | {r.reference:,.0f} {r.unit} | {r.ratio:.3f} | "
            f">= {r.target:.2f} | {mark} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller workloads (about 2-3 minutes on 2 cores)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per side (default 5, quick 3)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    n_texts, n_vectors, n_latents = (256, 16_384, 4096) if args.quick else (512, 40_960, 16_384)

    header = [
        f"date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, {'quick' if args.quick else 'full'} run, "
        f"{repeats} alternating repeats per side (medians)",
        f"machine: {machine()}",
    ]
    print("\n".join(header), flush=True)
    started = time.perf_counter()
    rows = bench_harvest(n_texts, repeats)
    print(f"harvest rows done in {time.perf_counter() - started:.0f}s", flush=True)
    sae_row, ev_line = bench_sae(n_vectors, n_latents, repeats)
    rows.append(sae_row)
    from benchmarks.stream import bench_stream

    grpc_rate, tcp_rate, stream_note = bench_stream(32 if args.quick else 64, repeats)
    rows.append(Row("stream", "MB/s", grpc_rate / 1e6, tcp_rate / 1e6, 0.5, stream_note + "; ref: raw TCP socket"))
    from benchmarks.e2e import bench_e2e

    e2e_ours, e2e_ref, e2e_note = bench_e2e(pseudo_texts(n_texts, seed=1), repeats)
    rows.append(Row("e2e", "tok/s", e2e_ours, e2e_ref, 0.8, e2e_note))
    notes = [f"- {r.name}: {r.note}" for r in rows] + [f"- {ev_line}"]
    footer = f"total {time.perf_counter() - started:.0f}s"

    lines = table(rows)
    print("\n" + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n" + footer)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    md = ["# mi-crow benchmark", "", *[f"- {h}" for h in header], "", *lines, "", *notes, "", footer, ""]
    (OUT_DIR / "latest.md").write_text("\n".join(md), encoding="utf-8")
    print(f"wrote {OUT_DIR / 'latest.md'}")


if __name__ == "__main__":
    main()
