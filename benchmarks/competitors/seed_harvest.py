"""Save one layer's activations with the seed (mi-crow 1.0.0.post10); print the timed seconds.

The way a seed user does it: ``LanguageModel.from_local_torch`` on the model directory with a
``LocalStore``, then ``lm.activations.save_activations(texts, layer, batch_size=...)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time

import torch
from _common import emit, sync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--texts", required=True, help="JSON file: a list of strings")
    parser.add_argument("--layer-suffix", required=True, help="e.g. transformer_h_1 (the seed prefixes names)")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dtype", default="", help="bfloat16 / float16: cast the loaded model, as a seed user would")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from importlib.metadata import version

    from mi_crow.language_model.language_model import LanguageModel
    from mi_crow.store import LocalStore

    logging.disable(logging.INFO)
    with open(args.texts, encoding="utf-8") as f:
        texts = json.load(f)
    with tempfile.TemporaryDirectory(prefix="seed_harvest_") as tmp:
        lm = LanguageModel.from_local_torch(args.model_dir, args.model_dir, LocalStore(tmp), device=args.device)
        if args.dtype:
            lm.model.to(getattr(torch, args.dtype))
        names = [n for n in lm.layers.get_layer_names() if n.endswith(args.layer_suffix)]
        if not names:
            raise SystemExit(f"no layer ending in {args.layer_suffix!r}")
        layer = min(names, key=len)
        lm.activations.save_activations(texts[: args.batch], layer, batch_size=args.batch)  # warm-up
        seconds = []
        for _ in range(args.repeats):
            sync(args.device)
            t0 = time.perf_counter()
            lm.activations.save_activations(texts, layer, batch_size=args.batch)
            sync(args.device)
            seconds.append(time.perf_counter() - t0)
    emit(side="seed", version=version("mi-crow"), layer=layer, seconds=min(seconds), all_seconds=seconds)


if __name__ == "__main__":
    main()
