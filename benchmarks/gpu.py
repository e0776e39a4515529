"""The benchmark suite on a GPU, in bf16: a tiny and a GPT-2-small-shaped random model (under 8 minutes).

    .venv/bin/python -m benchmarks.gpu              # on a CUDA machine; exits 0 with a message elsewhere
    .venv/bin/python -m benchmarks.gpu --dry-run    # the same code path on the CPU, tiny shapes, float32

Rows: harvest, harvest-vs-trunk, harvest-many, harvest-vs-seed for each model, then sae-train against the
plain loop and every installable competitor. The table (ours / reference with absolute tokens/s and
vectors/s) is printed and written to ``$OUT/gpu_bench.md`` when ``OUT`` is set, else to
``benchmarks/out/gpu.md``. Competitors come from ``.bench/envs`` (installed on first use; on a machine
without network access they show as "not installable" unless the envs were carried there).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import Row, machine, pseudo_texts, table
from benchmarks.run import BATCH_SIZE, LAYER, OUT_DIR, bench_harvest, bench_sae
from benchmarks.versus import Competitors, bench_harvest_vs_seed

# name -> (n_layer, n_embd, n_head); GPT-2 small is 12 x 768 with 12 heads.
MODELS = {"tiny": (4, 256, 4), "gpt2-small-shaped": (12, 768, 12)}
DRY_MODELS = {"tiny": (4, 256, 4), "small-shaped stand-in": (2, 64, 4)}


def build(model_dir: Path, n_layer: int, n_embd: int, n_head: int) -> Path:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from mi_crow.testing.tiny_models import build_tiny_tokenizer

    build_tiny_tokenizer(model_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    config = GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=len(tok), n_positions=128,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    return model_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="run the GPU path on the CPU with tiny shapes")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per side (default 3, dry 1)")
    parser.add_argument("--no-competitors", action="store_true")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("benchmarks.gpu: no CUDA GPU on this machine, nothing to measure (--dry-run checks the code path on CPU)")
        return 0
    device = "cpu" if args.dry_run else "cuda"
    dtype = "float32" if args.dry_run else "bfloat16"  # CPU bf16 kernels are ~100x slower here: not the point
    repeats = args.repeats or (1 if args.dry_run else 3)
    n_texts, n_vectors, n_latents = (32, 4096, 512) if args.dry_run else (1024, 65_536, 16_384)
    threads = torch.get_num_threads()
    comps = Competitors(enabled=not args.no_competitors)
    header = [
        f"date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"torch {torch.__version__}, device {device}, {dtype}, {'dry run' if args.dry_run else 'GPU run'}, "
        f"{repeats} alternating repeats per side (medians)",
        f"machine: {machine()}",
    ]
    print("\n".join(header), flush=True)
    started = time.perf_counter()
    rows: list[Row] = []
    extra: list[str] = []
    for name, shape in (DRY_MODELS if args.dry_run else MODELS).items():
        with tempfile.TemporaryDirectory(prefix="mi_crow_gpu_model_") as tmp:
            model_dir = build(Path(tmp), *shape)
            model_rows = bench_harvest(model_dir, n_texts, repeats, device=device, dtype=dtype)
            texts = pseudo_texts(n_texts // 4, seed=2)
            model_rows.append(
                bench_harvest_vs_seed(comps, model_dir, texts, LAYER, BATCH_SIZE, repeats, threads, device, dtype)
            )
        for row in model_rows:
            row.name = f"{row.name} ({name})"
        rows += model_rows
        print(f"{name} ({shape[0]} x {shape[1]}) done at {time.perf_counter() - started:.0f}s", flush=True)
    sae_rows, lines = bench_sae(n_vectors, n_latents, repeats, comps, threads, device=device, bf16=not args.dry_run)
    rows += sae_rows
    extra += lines
    notes = [f"- {r.name}: {r.note}" for r in rows if r.note] + [f"- {line}" for line in extra]
    footer = f"total {time.perf_counter() - started:.0f}s"
    lines = table(rows)
    print("\n" + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n" + footer)
    out = Path(os.environ["OUT"]) / "gpu_bench.md" if os.environ.get("OUT") else OUT_DIR / "gpu.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    md = ["# mi-crow benchmark on GPU", "", *[f"- {h}" for h in header], "", *lines, "", *notes, "", footer, ""]
    out.write_text("\n".join(md), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
