"""Measure mi-crow's harvest and SAE training throughput against plain PyTorch and other libraries, side by side.

Each row runs ours and the reference alternately (order rotated every repeat, so drift in machine load
or thermal state hits every side alike) and reports medians. Timings are printed, never asserted: a
ratio below target is information, not a failure of the script. Competitors (SAELens, overcomplete,
the seed mi-crow 1.0.0.post10) run in their own environments, installed on first use (``envs.py``).

    .venv/bin/python -m benchmarks.run [--quick] [--threads N] [--repeats N] [--rows a,b] [--no-competitors]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import Row, alternate, explained_variance, machine, pseudo_texts, table
from benchmarks.versus import Competitors

OUT_DIR = Path(__file__).parent / "out"
LAYER = "transformer_h_1"
LAYER_INDEX = 1  # block index of LAYER in model.transformer.h
BATCH_SIZE = 32
D_IN = 768
SAE_BATCH = 4096
SAE_K = 32
EV_TOLERANCE = 0.01  # held-out explained variance within this of a competitor's counts as equal
GROUPS = ("harvest", "harvest-vs-seed", "sae-train", "multi-sae", "memory", "stream", "e2e")

__all__ = ["Row", "alternate", "explained_variance", "machine", "pseudo_texts", "table"]


def sync(device: str | None) -> None:
    if device and device.startswith("cuda"):
        torch.cuda.synchronize()


# -- harvest ---------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by the trunk baseline's hook to end the forward after the harvested block."""


def bench_harvest(
    model_dir: Path, n_texts: int, repeats: int, device: str | None = None, dtype: str | None = None
) -> list[Row]:
    from mi_crow.language_model import LanguageModel
    from mi_crow.store import LocalStore

    texts = pseudo_texts(n_texts)
    lm = LanguageModel(str(model_dir), device=device, dtype=dtype)
    all_layers = [f"transformer_h_{i}" for i in range(len(lm.model.transformer.h))]
    batches = [texts[i : i + BATCH_SIZE] for i in range(0, len(texts), BATCH_SIZE)]
    n_tokens = sum(int(lm.tokenize(b)["attention_mask"].sum()) for b in batches)

    def harvest(layers: list[str]) -> float:
        with tempfile.TemporaryDirectory(prefix="mi_crow_bench_store_") as tmp:
            t0 = time.perf_counter()
            lm.save_activations(texts, layers, batch_size=BATCH_SIZE, progress=False, store=LocalStore(tmp))
            elapsed = time.perf_counter() - t0  # save_activations returns with every shard on disk
        return n_tokens / elapsed

    def full() -> float:
        # What a user writes to run the model: tokenize, then a full forward that computes logits.
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                lm.model(**lm.tokenize(b), use_cache=False)
        sync(device)
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
            sync(device)
            return n_tokens / (time.perf_counter() - t0)
        finally:
            handle.remove()

    # One rotation of four sides: ``ours`` is the numerator of the first two ratios, ``many`` of the third.
    sides = [lambda: harvest([LAYER]), full, trunk, lambda: harvest(all_layers)]
    ours_r, full_r, trunk_r, many_r = (statistics.median(rates) for rates in alternate(sides, repeats))
    note = f"{len(texts)} texts, {n_tokens} tokens, batch {BATCH_SIZE}"
    return [
        Row("harvest", "tok/s", ours_r, full_r, 0.95, note + f", layer {LAYER}; ref: full forward"),
        Row("harvest-vs-trunk", "tok/s", ours_r, trunk_r, 0.9,
            note + f", layer {LAYER}; ref: forward stopped after block {LAYER_INDEX}"),
        Row("harvest-many", "tok/s", many_r, full_r, 0.8,
            note + f", all {len(all_layers)} blocks in one pass; ref: full forward"),
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


def sparse_data(n: int, d: int, n_atoms: int, k_true: int, gen: torch.Generator) -> torch.Tensor:
    """Vectors that are sparse sums of ``k_true`` of ``n_atoms`` unit directions plus a little noise.

    Unlike Gaussian noise this has the structure an SAE is for, so held-out explained variance says
    something about how well each trainer learns in the same number of steps.
    """
    atoms = F.normalize(torch.randn(n_atoms, d, generator=gen), dim=-1)
    out = torch.empty(n, d)
    for start in range(0, n, 8192):  # in slices: an (n, k_true, d) gather would be gigabytes
        m = min(8192, n - start)
        idx = torch.randint(0, n_atoms, (m, k_true), generator=gen)
        weights = 0.5 + 2 * torch.rand(m, k_true, generator=gen)
        out[start : start + m] = F.embedding_bag(idx, atoms, per_sample_weights=weights, mode="sum")
    return out + 0.05 * torch.randn(n, d, generator=gen)


def bench_sae(
    n_vectors: int,
    n_latents: int,
    repeats: int,
    comps: Competitors,
    threads: int,
    device: str = "cpu",
    bf16: bool = False,
) -> tuple[list[Row], list[str]]:
    from safetensors.torch import save_file

    from benchmarks.versus import EV_SIDES_NOTE, sae_competitor_sides
    from mi_crow.mechanistic.sae import SaeTrainer, TopKSae
    from mi_crow.store import LocalStore

    gen = torch.Generator().manual_seed(0)
    data = sparse_data(n_vectors + 4096, D_IN, n_latents, SAE_K // 2, gen)
    data, held_out = data[:n_vectors].contiguous(), data[n_vectors:].contiguous()
    steps = math.ceil(n_vectors / SAE_BATCH)
    lr = 2e-4 / math.sqrt(n_latents / 16384)  # the trainer's default for this width, given to every side
    ev: dict[str, float] = {}
    dev_data, dev_held = data.to(device), held_out.to(device)

    def ours() -> float:
        hp = {"epochs": 1, "batch_size": SAE_BATCH, "k": SAE_K, "n_latents": n_latents, "lr": lr,
              "log_every": 10**9, "device": device, "autocast_dtype": "bf16" if bf16 else None}  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="mi_crow_bench_sae_") as tmp:
            trainer = SaeTrainer(None, "x", TopKSae, hp, progress=False, store=LocalStore(tmp), model_id="bench")
            # Timed from train() to its return: includes init, per-step metrics and saving the SAE.
            t0 = time.perf_counter()
            sae = trainer.train(dev_data)
            sync(device)
            elapsed = time.perf_counter() - t0
        with torch.no_grad():
            ev["ours"] = explained_variance(dev_held, sae.float()(dev_held).x_hat)
        return n_vectors / elapsed

    def ref() -> float:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        sae = PlainTopK(D_IN, n_latents, SAE_K).to(device)
        with torch.no_grad():
            sae.b_dec.copy_(dev_data[:SAE_BATCH].mean(0))
        opt = torch.optim.Adam(sae.parameters(), lr=lr)
        order = torch.randperm(n_vectors, device=device)  # shuffled like the trainer's epoch
        for step in range(steps):
            x = dev_data[order[step * SAE_BATCH : (step + 1) * SAE_BATCH]]
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                loss = (sae(x) - x).float().pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        elapsed = time.perf_counter() - t0
        with torch.no_grad():
            ev["plain PyTorch"] = explained_variance(dev_held, sae(dev_held))
        return n_vectors / elapsed

    with tempfile.TemporaryDirectory(prefix="mi_crow_bench_sae_data_") as tmp:
        data_file = Path(tmp) / "data.safetensors"
        save_file({"train": data, "held_out": held_out}, str(data_file))
        comp_sides, rows = sae_competitor_sides(
            comps, data_file, n_latents, SAE_K, SAE_BATCH, lr, threads, device, bf16
        )
        ours(), ref()  # warm-up; each competitor runner warms up in its own process
        failed: dict[str, str] = {}
        sides = [ours, ref, *[_guard(side, name, failed) for name, side, _ in comp_sides]]
        rates = alternate(sides, repeats, warm_up=False)
    note = f"{n_vectors} x {D_IN} -> {n_latents} latents, k {SAE_K}, batch {SAE_BATCH}, {steps} steps, lr {lr:.1e}"
    ours_r = statistics.median(rates[0])
    rows.insert(0, Row("sae-train", "vec/s", ours_r, statistics.median(rates[1]), 1.0,
                       note + "; ref: plain dense TopK loop"))  # fmt: skip
    lines = []
    for (name, _, results), r in zip(comp_sides, rates[2:], strict=True):
        row_name = f"sae-train-vs-{name}"
        if name in failed:
            rows.append(Row(row_name, "vec/s", ours_r, float("nan"), 2.0, status=f"failed: {failed[name]}"))
            continue
        version = results[-1].get("version", "?")
        ev[name] = statistics.median(float(x["explained_variance"]) for x in results)
        rows.append(Row(row_name, "vec/s", ours_r, statistics.median(r), 2.0, f"{name} {version}, same data/shapes/lr"))
    fastest = max((row for row in rows[1:] if not row.status), key=lambda row: row.reference, default=None)
    if fastest is not None:
        lines.append(f"fastest other SAE trainer: {fastest.name.removeprefix('sae-train-vs-')} "
                     f"(ours / it = {fastest.ratio:.2f}, target >= 2)")  # fmt: skip
    verdicts = ", ".join(
        f"{k} {v:.4f} ({'ours equal or better' if ev['ours'] >= v - EV_TOLERANCE else 'OURS WORSE'})"
        for k, v in ev.items()
        if k != "ours"
    )
    lines.append(f"held-out explained variance ({EV_SIDES_NOTE}): ours {ev['ours']:.4f}; {verdicts}")
    return rows, lines


def _guard(side, name: str, failed: dict[str, str]):
    """A competitor that crashes mid-run is reported in its row; the other sides keep running."""

    def run() -> float:
        if name in failed:
            return float("nan")
        try:
            return side()
        except (RuntimeError, OSError) as exc:
            failed[name] = str(exc)[:200]
            return float("nan")

    return run


# -- report ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller workloads (a few minutes on 2 cores)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per side (default 5, quick 3)")
    parser.add_argument("--rows", default=",".join(GROUPS), help=f"comma-separated groups of rows: {','.join(GROUPS)}")
    parser.add_argument("--no-competitors", action="store_true", help="skip the rows needing other libraries")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.rows.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {','.join(GROUPS)}")
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    n_texts, n_vectors, n_latents = (256, 16_384, 4096) if args.quick else (512, 40_960, 16_384)
    comps = Competitors(enabled=not args.no_competitors)

    header = [
        f"date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, {'quick' if args.quick else 'full'} run, "
        f"{repeats} alternating repeats per side (medians)",
        f"machine: {machine()}",
    ]
    print("\n".join(header), flush=True)
    started = time.perf_counter()
    rows: list[Row] = []
    extra: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mi_crow_bench_model_") as model_tmp:
        from benchmarks.models import build_gpt2

        model_dir = build_gpt2(Path(model_tmp))
        for group in groups:
            t0 = time.perf_counter()
            if group == "harvest":
                rows += bench_harvest(model_dir, n_texts, repeats)
            elif group == "harvest-vs-seed":
                from benchmarks.versus import bench_harvest_vs_seed

                texts = pseudo_texts(128 if args.quick else 256, seed=2)  # 64 would be mostly fixed costs
                rows.append(bench_harvest_vs_seed(comps, model_dir, texts, LAYER, BATCH_SIZE, repeats, args.threads))
            elif group == "sae-train":
                sae_rows, lines = bench_sae(n_vectors, n_latents, repeats, comps, args.threads)
                rows += sae_rows
                extra += lines
            elif group == "multi-sae":
                from benchmarks.multi_sae import bench_multi_sae

                rows.append(bench_multi_sae(model_dir, pseudo_texts(n_texts // 2, seed=3), repeats))
            elif group == "memory":
                from benchmarks.memory import bench_memory

                mem_rows, lines = bench_memory(model_dir, shard_tokens=8192 if args.quick else 65_536)
                rows += mem_rows
                extra += lines
            elif group == "stream":
                from benchmarks.stream import bench_stream

                grpc_rate, tcp_rate, stream_note = bench_stream(128 if args.quick else 256, repeats)
                rows.append(Row("stream", "MB/s", grpc_rate / 1e6, tcp_rate / 1e6, 0.6,
                                stream_note + "; ref: raw TCP socket"))  # fmt: skip
            elif group == "e2e":
                from benchmarks.e2e import bench_e2e

                e2e_ours, e2e_ref, e2e_note = bench_e2e(pseudo_texts(n_texts, seed=1), repeats)
                rows.append(Row("e2e", "tok/s", e2e_ours, e2e_ref, 0.8, e2e_note))
            print(f"{group} done in {time.perf_counter() - t0:.0f}s", flush=True)
    notes = [f"- {r.name}: {r.note}" for r in rows if r.note] + [f"- {line}" for line in extra]
    footer = f"total {time.perf_counter() - started:.0f}s"

    lines = table(rows)
    print("\n" + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n" + footer)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    md = ["# mi-crow benchmark", "", *[f"- {h}" for h in header], "", *lines, "", *notes, "", footer, ""]
    (OUT_DIR / "latest.md").write_text("\n".join(md), encoding="utf-8")
    print(f"wrote {OUT_DIR / 'latest.md'}")


if __name__ == "__main__":
    main()
