"""``as_text_dataset``: turn whatever a caller hands over (texts, paths, HF objects, JSON specs) into
a ``TextDataset``, with one error listing the accepted forms when nothing fits."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from mi_crow.datasets.errors import DatasetError
from mi_crow.datasets.text_dataset import TextDataset

ACCEPTED_FORMS = (
    "a TextDataset",
    "a str path to an existing file or directory",
    "a pathlib.Path or a list/tuple of Paths (files)",
    "a list/tuple of str (treated as the texts themselves, not as paths)",
    "a datasets.Dataset / IterableDataset / DatasetDict / IterableDatasetDict",
    'a dict spec: {"type": "hf", "name": ...}, {"type": "local", "paths": [...]}, '
    '{"type": "disk", "path": ...} or {"type": "texts", "texts": [...]}',
)

# Allowed keys per spec type (besides "type"/"kind"); unknown keys are rejected so that a typo such
# as "text_feild" fails loudly instead of silently reading the default column.
SPEC_KEYS: dict[str, frozenset[str]] = {
    "hf": frozenset({"name", "config", "split", "text_field", "sample_limit", "streaming", "load_kwargs"}),
    "local": frozenset({"paths", "split", "text_field", "sample_limit"}),
    "disk": frozenset({"path", "split", "text_field", "sample_limit"}),
    "texts": frozenset({"texts", "sample_limit"}),
}
_REQUIRED_KEY = {"hf": "name", "local": "paths", "disk": "path", "texts": "texts"}


def as_text_dataset(
    obj: object,
    *,
    text_field: str = "text",
    split: str | None = None,
    sample_limit: int | None = None,
) -> TextDataset:
    """Coerce ``obj`` into a ``TextDataset``.

    ``text_field`` and ``split`` are defaults: values inside a dict spec win over them.
    ``sample_limit`` is applied on top of any limit the source already has (the tighter one wins).
    A list of ``str`` is always texts; pass ``Path`` objects (or use ``TextDataset.from_files``)
    to read files.
    """
    dataset = _resolve(obj, text_field=text_field, split=split)
    return dataset if sample_limit is None else dataset.limit(sample_limit)


def _resolve(obj: object, *, text_field: str, split: str | None) -> TextDataset:
    if isinstance(obj, TextDataset):
        return obj
    if isinstance(obj, str):
        if os.path.exists(obj):
            return TextDataset.from_files([obj], text_field=text_field, split=split)
        raise DatasetError(
            f"{obj!r} is not an existing file or directory; to use it as a text, wrap it in a list "
            '([text]); for a Hugging Face hub dataset pass {"type": "hf", "name": ...}'
        )
    if isinstance(obj, os.PathLike):
        return TextDataset.from_files([obj], text_field=text_field, split=split)
    # Before the Mapping check: DatasetDict is a dict subclass, not a spec.
    if _is_hf_data(obj):
        return TextDataset.from_hf_dataset(obj, split=split, text_field=text_field)  # type: ignore[arg-type]
    if isinstance(obj, Mapping):
        return _from_spec(obj, text_field=text_field, split=split)
    if isinstance(obj, list | tuple):
        return _from_sequence(obj, text_field=text_field, split=split)
    raise _unaccepted(f"cannot make a text dataset from {type(obj).__name__}")


def _from_sequence(items: list[Any] | tuple[Any, ...], *, text_field: str, split: str | None) -> TextDataset:
    if all(isinstance(item, str) or item is None for item in items):
        return TextDataset.from_texts(items)
    if all(isinstance(item, os.PathLike) for item in items):
        return TextDataset.from_files(items, text_field=text_field, split=split)
    kinds = sorted({type(item).__name__ for item in items})
    raise _unaccepted(
        f"a list must hold only str (texts) or only Paths (files), got a mix of {kinds}; "
        "to read files given as strings use TextDataset.from_files or {'type': 'local', 'paths': [...]}"
    )


def _is_hf_data(obj: object) -> bool:
    # If the HF library was never imported, obj cannot be one of its objects: skip the slow import.
    if "datasets" not in sys.modules:
        return False
    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

    return isinstance(obj, Dataset | IterableDataset | DatasetDict | IterableDatasetDict)


def _from_spec(spec: Mapping[str, Any], *, text_field: str, split: str | None) -> TextDataset:
    # "kind" is accepted too, so the output of TextDataset.describe() can be fed back in.
    kind = spec.get("type", spec.get("kind"))
    if kind not in SPEC_KEYS:
        raise _unaccepted(f"dataset spec needs a 'type' among {sorted(SPEC_KEYS)}, got {kind!r}")
    options = {k: v for k, v in spec.items() if k not in ("type", "kind")}
    unknown = sorted(set(options) - SPEC_KEYS[kind])
    if unknown:
        raise DatasetError(f"unknown keys {unknown} in {kind!r} dataset spec; allowed: {sorted(SPEC_KEYS[kind])}")
    required = _REQUIRED_KEY[kind]
    if options.get(required) is None:
        raise DatasetError(f"{kind!r} dataset spec needs {required!r}")

    limit = options.get("sample_limit")
    field = options.get("text_field", text_field)
    chosen_split = options.get("split", split)
    if kind == "texts":
        return TextDataset.from_texts(options["texts"], sample_limit=limit)
    if kind == "disk":
        return TextDataset.from_disk(options["path"], split=chosen_split, text_field=field, sample_limit=limit)
    if kind == "local":
        paths = options["paths"]
        paths = [paths] if isinstance(paths, str) else list(paths)
        return TextDataset.from_files(paths, text_field=field, sample_limit=limit, split=chosen_split)
    load_kwargs = options.get("load_kwargs") or {}
    if not isinstance(load_kwargs, Mapping):
        raise DatasetError(f"'load_kwargs' in an 'hf' dataset spec must be an object, got {load_kwargs!r}")
    return TextDataset.from_hf(
        options["name"],
        split=options.get("split", "train" if split is None else split),
        text_field=field,
        sample_limit=limit,
        streaming=bool(options.get("streaming", False)),
        config=options.get("config"),
        **load_kwargs,
    )


def _unaccepted(reason: str) -> DatasetError:
    forms = "\n  - ".join(ACCEPTED_FORMS)
    return DatasetError(f"{reason}. Accepted dataset forms:\n  - {forms}")


__all__ = ["ACCEPTED_FORMS", "as_text_dataset"]
