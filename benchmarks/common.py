"""What every benchmark row shares: the result row, the rotating alternation, texts, the table."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

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
    status: str = ""  # set when the row could not be measured (e.g. "not installable: ..."); shown instead
    lower_is_better: bool = False  # memory rows: the ratio passes at or below the target

    @property
    def ratio(self) -> float:
        return self.ours / self.reference if self.reference else float("nan")

    @property
    def passed(self) -> bool:
        if self.status or math.isnan(self.ratio):
            return False
        return self.ratio <= self.target if self.lower_is_better else self.ratio >= self.target


def skipped(name: str, target: float, status: str, note: str = "", lower_is_better: bool = False) -> Row:
    return Row(name, "", float("nan"), float("nan"), target, note, status, lower_is_better)


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


def alternate(sides: list[Callable[[], float]], repeats: int, warm_up: bool = True) -> list[list[float]]:
    """Run each side once untimed (warm-up), then ``repeats`` rounds; returns each side's rates.

    The order rotates every round, so drift in machine load (other processes, thermal state) and
    cache churn left by the previous side hit every side alike. ``warm_up=False`` for sides that warm
    up on their own (the competitor runners, each a fresh process, do one untimed run first).
    """
    if warm_up:
        for side in sides:
            side()
    rates: list[list[float]] = [[] for _ in sides]
    for r in range(repeats):
        for j in range(len(sides)):
            i = (j + r) % len(sides)
            rates[i].append(sides[i]())
    return rates


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = x.float(), x_hat.float()
    return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0, keepdim=True)).pow(2).sum())


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f} {unit}" if abs(value) >= 100 else f"{value:,.2f} {unit}"


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| row | ours | reference | ratio | target | pass |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        target = f"{'<=' if r.lower_is_better else '>='} {r.target:.2f}"
        if r.status:
            status = r.status.replace("|", "/").replace("\n", " ")  # a reason must not break the table
            lines.append(f"| {r.name} | - | - | - | {target} | {status} |")
            continue
        mark = "yes" if r.passed else "NO"
        lines.append(
            f"| {r.name} | {_fmt(r.ours, r.unit)} | {_fmt(r.reference, r.unit)} | {r.ratio:.3f} | {target} | {mark} |"
        )
    return lines
