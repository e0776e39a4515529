"""Rows against other libraries, each run by its own interpreter from ``.bench/envs`` (see ``envs.py``).

A competitor side is one fresh subprocess per timed repeat: the runner script does one untimed warm-up
run, then the timed one, and prints a JSON line. Ours runs in this process, alternating with them.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import Row, alternate, skipped
from benchmarks.envs import EnvState, ensure, run_json

RUNNERS = Path(__file__).parent / "competitors"


def runner_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}


class Competitors:
    """Installs each competitor on first use (cached) and remembers why one is not installable."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.states: dict[str, EnvState] = {}

    def get(self, name: str) -> EnvState:
        if name not in self.states:
            if not self.enabled:
                self.states[name] = EnvState(name, None, "skipped (--no-competitors)")
            else:
                t0 = time.perf_counter()
                self.states[name] = ensure(name)
                took = time.perf_counter() - t0
                if took > 5:
                    print(f"installed competitor {name} in {took:.0f}s", flush=True)
        return self.states[name]

    def status(self, name: str) -> str:
        state = self.get(name)
        return (
            ""
            if state.ok
            else (state.error if state.error.startswith("skipped") else f"not installable: {state.error}")
        )


def runner_side(
    python: Path, script: str, args: list[str], threads: int, results: list[dict], key: str = "vectors_per_s"
) -> Callable[[], float]:
    """A side for ``alternate``: one subprocess run of ``script``; its JSON lines collect in ``results``."""

    def side() -> float:
        with tempfile.TemporaryDirectory(prefix="mi_crow_bench_runner_") as cwd:
            out = run_json(python, RUNNERS / script, args, env={**runner_env(threads)}, cwd=Path(cwd))
        results.append(out)
        return float(out[key])

    return side


# -- harvest vs the seed ---------------------------------------------------------------------------
def bench_harvest_vs_seed(
    comps: Competitors,
    model_dir: Path,
    texts: list[str],
    layer: str,
    batch_size: int,
    repeats: int,
    threads: int,
    device: str | None = None,
    dtype: str | None = None,
) -> Row:
    """Our ``save_activations`` vs the seed's ``lm.activations.save_activations``: same model dir, layer, texts."""
    from mi_crow.language_model import LanguageModel
    from mi_crow.store import LocalStore

    target = 5.0
    status = comps.status("mi-crow")
    if status:
        return skipped("harvest-vs-seed", target, status)
    lm = LanguageModel(str(model_dir), device=device, dtype=dtype)
    n_tokens = sum(
        int(lm.tokenize(texts[i : i + batch_size])["attention_mask"].sum()) for i in range(0, len(texts), batch_size)
    )

    def ours() -> float:
        with tempfile.TemporaryDirectory(prefix="mi_crow_bench_store_") as tmp:
            t0 = time.perf_counter()
            lm.save_activations(texts, [layer], batch_size=batch_size, progress=False, store=LocalStore(tmp))
            return n_tokens / (time.perf_counter() - t0)

    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mi_crow_bench_texts_") as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(texts), encoding="utf-8")
        args = ["--model-dir", str(model_dir), "--texts", str(texts_file), "--layer-suffix", layer]
        args += ["--batch", str(batch_size), "--threads", str(threads), "--device", device or "cpu"]
        if dtype:
            args += ["--dtype", dtype]
        seed_python = comps.get("mi-crow").python
        assert seed_python is not None
        seed = runner_side(seed_python, "seed_harvest.py", args, threads, results, key="seconds")
        ours()  # warm-up; the seed runner warms up in its own process
        try:
            ours_r, seed_s = alternate([ours, seed], repeats, warm_up=False)
        except RuntimeError as exc:
            return skipped("harvest-vs-seed", target, f"seed failed: {exc}")
    seed_rate = n_tokens / statistics.median(seed_s)
    version = results[-1].get("version", "?")
    note = f"{len(texts)} texts, {n_tokens} tokens, batch {batch_size}, layer {layer}; ref: mi-crow {version} (seed)"
    return Row("harvest-vs-seed", "tok/s", statistics.median(ours_r), seed_rate, target, note)


# -- SAE training vs other trainers ----------------------------------------------------------------
SAE_COMPETITORS = (  # (row suffix, env name, runner script)
    ("overcomplete", "overcomplete", "overcomplete_train.py"),
    ("sae-lens", "sae-lens", "saelens_train.py"),
    ("seed", "mi-crow", "seed_train.py"),
)


def sae_competitor_sides(
    comps: Competitors,
    data_file: Path,
    n_latents: int,
    k: int,
    batch: int,
    lr: float,
    threads: int,
    device: str,
    bf16: bool = False,
) -> tuple[list[tuple[str, Callable[[], float], list[dict]]], list[Row]]:
    """Sides for the competitors that are installable, and rows for those that are not."""
    args = ["--data", str(data_file), "--n-latents", str(n_latents), "--k", str(k), "--batch", str(batch)]
    args += ["--lr", repr(lr), "--threads", str(threads), "--device", device, *(["--bf16"] if bf16 else [])]
    sides, rows = [], []
    for suffix, env_name, script in SAE_COMPETITORS:
        status = comps.status(env_name)
        if status:
            rows.append(skipped(f"sae-train-vs-{suffix}", 2.0, status))
            continue
        python = comps.get(env_name).python
        assert python is not None
        results: list[dict] = []
        sides.append((suffix, runner_side(python, script, args, threads, results), results))
    return sides, rows


EV_SIDES_NOTE = "synthetic sparse data, same steps and lr for every side; equal = within 0.01"
