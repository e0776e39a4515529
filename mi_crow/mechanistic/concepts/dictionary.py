"""The concept dictionary: a human name (and optional description) per SAE latent, as JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mi_crow.mechanistic.concepts.errors import ConceptValidationError
from mi_crow.store.atomic import atomic_write_json


@dataclass
class Concept:
    name: str
    description: str = ""
    score: float | None = None  # how well the name fits (e.g. AUROC against a labelled concept)


class ConceptDictionary:
    def __init__(self, n_latents: int, entries: dict[int, Concept] | None = None) -> None:
        self.n_latents = n_latents
        self.entries: dict[int, Concept] = {}
        for latent, concept in (entries or {}).items():
            self.set(latent, concept)

    def set(self, latent: int, concept: Concept | str) -> None:
        if isinstance(concept, str):
            concept = Concept(concept)
        problems = _problems([(latent, concept.name, concept.score)], self.n_latents)
        if problems:
            raise ConceptValidationError("; ".join(problems))
        self.entries[int(latent)] = concept

    def name(self, latent: int) -> str | None:
        concept = self.entries.get(int(latent))
        return concept.name if concept else None

    def find(self, name: str) -> list[int]:
        return [i for i, c in self.entries.items() if c.name == name]

    def __len__(self) -> int:
        return len(self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_latents": self.n_latents,
            "concepts": {str(i): asdict(c) for i, c in sorted(self.entries.items())},
        }

    def save(self, path: str | Path) -> Path:
        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def from_rows(cls, rows: list[tuple[Any, Any, Any, Any]], n_latents: int, source: str) -> ConceptDictionary:
        """Rows of (latent, name, description, score), validated all at once so every problem is reported."""
        parsed: list[tuple[Any, Any, Any]] = [(r[0], r[1], r[3]) for r in rows]
        problems = _problems(parsed, n_latents)
        if problems:
            shown = "; ".join(problems[:20]) + (f"; … and {len(problems) - 20} more" if len(problems) > 20 else "")
            raise ConceptValidationError(
                f"{source}: {len(problems)} bad entries for an SAE with {n_latents} latents: {shown}"
            )
        out = cls(n_latents)
        for latent, name, description, score in rows:
            out.entries[int(latent)] = Concept(
                str(name), str(description or ""), None if score in (None, "") else float(score)
            )
        return out

    @classmethod
    def load(cls, path: str | Path, n_latents: int) -> ConceptDictionary:
        path = Path(path)
        text = path.read_text(encoding="utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte-order mark
        if path.suffix.lower() == ".csv":
            return cls.from_csv(text, n_latents, source=str(path))
        return cls.from_json(text, n_latents, source=str(path))

    @classmethod
    def from_json(cls, text: str, n_latents: int, source: str = "concepts") -> ConceptDictionary:
        repeated: list[str] = []

        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            keys = [k for k, _ in items]
            repeated.extend(sorted({k for k in keys if keys.count(k) > 1}))
            return dict(items)

        try:
            data = json.loads(text, object_pairs_hook=pairs)
        except json.JSONDecodeError as exc:
            raise ConceptValidationError(f"{source}: not valid JSON ({exc})") from exc
        if repeated:
            raise ConceptValidationError(f"{source}: latent {', '.join(repeated)} appears twice")
        table = data.get("concepts", data) if isinstance(data, dict) else data
        rows: list[tuple[Any, Any, Any, Any]] = []
        if isinstance(table, dict):
            for key, value in table.items():
                if isinstance(value, dict):
                    rows.append((key, value.get("name"), value.get("description", ""), value.get("score")))
                else:
                    rows.append((key, value, "", None))
        elif isinstance(table, list):
            for item in table:
                if not isinstance(item, dict):
                    raise ConceptValidationError(f"{source}: list entries must be objects with 'latent' and 'name'")
                rows.append((item.get("latent"), item.get("name"), item.get("description", ""), item.get("score")))
        else:
            raise ConceptValidationError(f"{source}: expected an object latent -> name, or a list of objects")
        return cls.from_rows(rows, n_latents, source)

    @classmethod
    def from_csv(cls, text: str, n_latents: int, source: str = "concepts.csv") -> ConceptDictionary:
        reader = csv.DictReader(io.StringIO(text))
        fields = {f.strip().lower(): f for f in reader.fieldnames or []}
        latent_col = fields.get("latent") or fields.get("neuron_idx") or fields.get("index")
        name_col = fields.get("name") or fields.get("concept_name") or fields.get("concept")
        if not latent_col or not name_col:
            raise ConceptValidationError(
                f"{source}: CSV needs a 'latent' (or neuron_idx) and a 'name' column; it has {reader.fieldnames}"
            )
        desc_col, score_col = fields.get("description"), fields.get("score")
        rows = [
            (
                r.get(latent_col),
                r.get(name_col),
                r.get(desc_col, "") if desc_col else "",
                r.get(score_col) if score_col else None,
            )
            for r in reader
        ]
        return cls.from_rows(rows, n_latents, source)


def _problems(rows: list[tuple[Any, Any, Any]], n_latents: int) -> list[str]:
    problems = []
    seen: set[int] = set()
    for latent, name, score in rows:
        try:
            idx = int(latent)
            if str(latent).strip() != str(idx):
                raise ValueError
        except (TypeError, ValueError):
            problems.append(f"latent {latent!r} is not an integer")
            continue
        if not 0 <= idx < n_latents:
            problems.append(f"latent {idx} out of range 0..{n_latents - 1}")
        if idx in seen:
            problems.append(f"latent {idx} appears twice")
        seen.add(idx)
        if not isinstance(name, str) or not name.strip():
            problems.append(f"latent {idx} has no name")
        if score not in (None, ""):
            try:
                if not math.isfinite(float(score)):
                    raise ValueError
            except (TypeError, ValueError):
                problems.append(f"latent {idx} has a non-numeric or non-finite score {score!r}")
    return problems
