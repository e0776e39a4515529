"""Peak memory of harvesting and of training from a run, in fresh processes: it should scale with the
shard size, not with the run. Each measurement is a child process (``python -m benchmarks.memory
harvest|train ...``) that resets its peak-RSS mark right before the work and reports the RSS then and
the peak after (VmHWM, falling back to ``getrusage(RUSAGE_SELF).ru_maxrss``); the parent compares the
growth of a run 10 shards long with one 2 shards long.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Row, pseudo_texts
from benchmarks.envs import ROOT, parse_json_line

LAYER = "transformer_h_1"
TOKENS_PER_TEXT = 85  # about what pseudo_texts gives with the tiny tokenizer; the child reports the real count
# growth(10 shards) / growth(2 shards); O(run) memory would give about 5. Training may reach 2 by design:
# its shuffle buffer holds up to 4 shards (buffer_shards), a 2-shard run fills only 2 of them.
TARGETS = {"harvest": 2.0, "train": 3.0}


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def _reset_peak() -> float:
    """Start a fresh peak measurement; returns the current RSS in MB (the baseline).

    Loading torch and the model leaves a high-water mark far above what harvesting adds, so the
    peak is reset (Linux: writing 5 to clear_refs sets VmHWM to the current RSS) right before the work.
    Without /proc the peak so far is the baseline, which hides growth below it.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return _status_mb("VmRSS") or 0.0


def _peak_mb() -> float:
    hwm = _status_mb("VmHWM")  # reset by _reset_peak; ru_maxrss is not
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_harvest(model_dir: str, store: str, n_texts: int, shard_tokens: int, run_id: str) -> dict:
    from mi_crow.language_model import LanguageModel
    from mi_crow.store import LocalStore

    lm = LanguageModel(model_dir)
    texts = pseudo_texts(n_texts, seed=4)
    lm.save_activations(texts[:32], [LAYER], batch_size=32, progress=False, store=LocalStore(store + "-warm"))
    before = _reset_peak()
    run = lm.save_activations(
        texts, [LAYER], batch_size=32, shard_size=shard_tokens, progress=False, store=LocalStore(store), run_id=run_id
    )
    n_tokens = run.layer(LAYER).n_tokens
    return {"before_mb": before, "peak_mb": _peak_mb(), "n_tokens": n_tokens, "d": lm.hidden_size(LAYER)}


def child_train(store: str, run_id: str) -> dict:
    from mi_crow.mechanistic.sae import SaeTrainer, TopKSae
    from mi_crow.store import LocalStore

    hp = {"epochs": 1, "batch_size": 1024, "k": 32, "n_latents": 1024, "log_every": 10**9}
    trainer = SaeTrainer(None, LAYER, TopKSae, hp, store=LocalStore(store), progress=False)
    before = _reset_peak()
    trainer.train(run_id)
    return {"before_mb": before, "peak_mb": _peak_mb()}


def _child(args: list[str]) -> dict:
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )
    out = parse_json_line(res.stdout)
    if res.returncode != 0 or out is None:
        raise RuntimeError(f"memory child {args[0]} failed: {res.stderr.strip().splitlines()[-1:]}")
    return out


def bench_memory(model_dir: Path, shard_tokens: int) -> tuple[list[Row], list[str]]:
    results: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mi_crow_bench_mem_") as tmp:
        for shards in (2, 10):
            store = str(Path(tmp) / f"store{shards}")
            n_texts = math.ceil(shards * shard_tokens / TOKENS_PER_TEXT * 1.02)
            run_id = f"mem{shards}"
            h = _child(["harvest", str(model_dir), store, str(n_texts), str(shard_tokens), run_id])
            t = _child(["train", store, run_id])
            results[shards] = {"harvest": h, "train": t}
    d = results[2]["harvest"]["d"]
    shard_bytes = shard_tokens * d * 4  # float32 activations; ids/positions/samples add 24 bytes a token
    rows, lines = [], []
    for kind in ("harvest", "train"):
        small, big = results[2][kind], results[10][kind]
        g_small = max(small["peak_mb"] - small["before_mb"], 0.01)
        g_big = max(big["peak_mb"] - big["before_mb"], 0.01)
        note = (
            f"peak RSS growth of a {results[10]['harvest']['n_tokens']}-token run (10 shards) vs a "
            f"{results[2]['harvest']['n_tokens']}-token run (2 shards); shard = {shard_tokens} tokens x {d} "
            f"= {shard_bytes:,} bytes; peaks {big['peak_mb']:.0f} / {small['peak_mb']:.0f} MB; O(run) would be ~5"
        )
        rows.append(Row(f"memory-{kind}", "MB", g_big, g_small, TARGETS[kind], note, lower_is_better=True))
        lines.append(
            f"memory-{kind}: growth {g_big:.1f} MB (10 shards) vs {g_small:.1f} MB (2 shards) = "
            f"{g_big * 2**20 / shard_bytes:.1f} vs {g_small * 2**20 / shard_bytes:.1f} shard sizes: "
            f"{'O(shard)' if g_big / g_small <= TARGETS[kind] else 'grows with the run'}"
        )
    return rows, lines


def main() -> None:
    parser = argparse.ArgumentParser(description="one memory measurement (run by bench_memory)")
    sub = parser.add_subparsers(dest="kind", required=True)
    h = sub.add_parser("harvest")
    for name in ("model_dir", "store"):
        h.add_argument(name)
    h.add_argument("n_texts", type=int)
    h.add_argument("shard_tokens", type=int)
    h.add_argument("run_id")
    t = sub.add_parser("train")
    t.add_argument("store")
    t.add_argument("run_id")
    args = parser.parse_args()
    if args.kind == "harvest":
        out = child_harvest(args.model_dir, args.store, args.n_texts, args.shard_tokens, args.run_id)
    else:
        out = child_train(args.store, args.run_id)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
