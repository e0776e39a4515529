"""``TextDataset``: a lazy, re-iterable stream of ``str`` samples from texts, files or HF datasets.

Every source is opened only when iterated, so a dataset object is cheap to build, to store in a
run manifest (``describe()``) and to pass around; construction checks only what is cheap to check
(limits, paths exist, extensions are known).

Sample rules, shared by every source:

* ``None`` samples and strings that are blank after ``strip()`` are skipped; other strings are
  yielded unchanged (only the line terminator is dropped from ``.txt`` lines).
* Any other sample type (a number in a JSONL field, a list column, ...) raises ``DatasetError``
  rather than being coerced, because a silently ``str()``-ed list is not the text the user meant.
* ``sample_limit`` caps the number of samples *yielded* (after skipping).
* A pass over the source that yields nothing raises ``EmptyDatasetError`` when it ends.

``TextDataset`` deliberately has no ``__len__``: for streamed sources the length is unknown
without reading everything, and a ``len()`` that sometimes reads the whole corpus is a trap.
``length_hint()`` returns a count only where it is already in memory.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mi_crow.datasets.errors import DatasetError, EmptyDatasetError

if TYPE_CHECKING:
    # The HF library costs seconds to import; it is only imported when a source actually needs it.
    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

    HFData = Dataset | IterableDataset | DatasetDict | IterableDatasetDict

# Opens the underlying source and returns raw samples (str, None or junk to be rejected).
SampleSource = Callable[[], Iterator[object]]

FILE_KINDS: dict[str, str] = {
    ".txt": "one sample per line",
    ".jsonl": "one JSON object per line",
    ".csv": "one row per sample, header required",
}
SAVED_DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
_HF_BATCH_ROWS = 1024


class TextDataset:
    """A re-iterable source of non-blank ``str`` samples; see the module docstring for the rules."""

    def __init__(
        self,
        open_samples: SampleSource,
        description: Mapping[str, Any],
        *,
        sample_limit: int | None = None,
        length_hint: int | None = None,
    ) -> None:
        """Low-level constructor; prefer the ``from_*`` class methods.

        ``open_samples`` must return a fresh iterator on every call; ``description`` must be
        JSON-serialisable and carry a ``kind`` key; ``length_hint`` is the number of samples the
        source yields before ``sample_limit``, if known without reading it.
        """
        self._open_samples = open_samples
        self._description = dict(description)
        self._sample_limit = _check_limit(sample_limit)
        self._length_hint = length_hint

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_texts(cls, texts: Sequence[str | None], sample_limit: int | None = None) -> TextDataset:
        """Wrap in-memory texts (copied, so later edits to ``texts`` do not leak in)."""
        if isinstance(texts, str | bytes):
            raise DatasetError("from_texts expects a sequence of strings, not a single string; wrap it in a list")
        items = tuple(texts)
        for index, item in enumerate(items):
            if item is not None and not isinstance(item, str):
                raise DatasetError(f"from_texts: item {index} is {type(item).__name__}, expected str")
        non_blank = sum(1 for item in items if item is not None and item.strip())
        return cls(
            lambda: iter(items),
            {"kind": "texts", "num_texts": len(items), "sha256": _texts_digest(items)},
            sample_limit=sample_limit,
            length_hint=non_blank,
        )

    @classmethod
    def from_hf(
        cls,
        name: str,
        split: str | None = "train",
        text_field: str = "text",
        sample_limit: int | None = None,
        streaming: bool = False,
        config: str | None = None,
        **load_kwargs: Any,
    ) -> TextDataset:
        """A dataset loaded with ``datasets.load_dataset(name, config, split=..., ...)`` on first use.

        ``config`` is the HF configuration name (``load_dataset``'s second argument, e.g.
        ``"wikitext-2-raw-v1"``); it has its own parameter because ``name`` is taken.
        """
        _check_text_field(text_field)
        description = {
            "kind": "hf",
            "name": name,
            "config": config,
            "split": split,
            "text_field": text_field,
            "streaming": streaming,
            "load_kwargs": _json_safe(load_kwargs),
        }
        label = _label(description)

        hf_kwargs = _fspath_kwargs(load_kwargs)

        def load() -> HFData:
            from datasets import load_dataset

            return load_dataset(name, config, split=split, streaming=streaming, **hf_kwargs)

        loaded = _Cached(load, label)
        return cls(
            lambda: _hf_samples(_pick_split(loaded.get(), split, label, check_own_split=False)[0], text_field, label),
            description,
            sample_limit=sample_limit,
        )

    @classmethod
    def from_disk(
        cls,
        path: str | os.PathLike[str],
        split: str | None = None,
        text_field: str = "text",
        sample_limit: int | None = None,
    ) -> TextDataset:
        """A dataset saved with ``save_to_disk`` (``Dataset`` or ``DatasetDict``), loaded on first use.

        For a ``DatasetDict`` ``split`` may be omitted only when there is exactly one split.
        """
        _check_text_field(text_field)
        description = {"kind": "disk", "path": _abs(path), "split": split, "text_field": text_field}
        open_samples = _disk_source(Path(path), split, text_field, _label(description))
        return cls(open_samples, description, sample_limit=sample_limit)

    @classmethod
    def from_files(
        cls,
        paths: Sequence[str | os.PathLike[str]],
        text_field: str = "text",
        sample_limit: int | None = None,
        split: str | None = None,
    ) -> TextDataset:
        """Samples from local files, read in the order given and streamed line/row by line/row.

        ``.txt``: one sample per line; ``.jsonl``: ``text_field`` of each JSON object; ``.csv``:
        column ``text_field``. A directory holding a ``save_to_disk`` dataset is read as by
        ``from_disk`` (``split`` is used only for those).
        """
        if isinstance(paths, str | os.PathLike):
            paths = [paths]  # a lone path is unambiguous here, unlike in as_text_dataset
        _check_text_field(text_field)
        if not paths:
            raise DatasetError("from_files needs at least one path")
        description = {"kind": "local", "paths": [_abs(p) for p in paths], "text_field": text_field}
        if split is not None:
            description["split"] = split
        # Resolved now so a typo in the 90th path fails before hours of harvesting the first 89.
        sources = [_file_source(Path(p), text_field, split) for p in paths]

        def open_samples() -> Iterator[object]:
            for source in sources:
                yield from source()

        return cls(open_samples, description, sample_limit=sample_limit)

    @classmethod
    def from_hf_dataset(
        cls,
        data: HFData,
        split: str | None = None,
        text_field: str = "text",
        sample_limit: int | None = None,
    ) -> TextDataset:
        """Wrap an in-memory ``Dataset``, ``IterableDataset``, ``DatasetDict`` or ``IterableDatasetDict``."""
        _check_text_field(text_field)
        description: dict[str, Any] = {"kind": "memory", "type": type(data).__name__, "text_field": text_field}
        chosen, description["split"] = _pick_split(data, split, _label(description))
        _require_column(getattr(chosen, "column_names", None), text_field, _label(description))
        num_rows = getattr(chosen, "num_rows", None)
        description["num_rows"] = num_rows
        return cls(
            lambda: _hf_samples(chosen, text_field, _label(description)),
            description,
            sample_limit=sample_limit,
            # An upper bound: blank rows are only discovered while iterating.
            length_hint=num_rows,
        )

    # ------------------------------------------------------------------ behaviour

    @property
    def sample_limit(self) -> int | None:
        return self._sample_limit

    def limit(self, sample_limit: int | None) -> TextDataset:
        """A copy capped at ``sample_limit`` samples; an existing tighter cap is kept."""
        new_limit = _check_limit(sample_limit)
        if new_limit is None or (self._sample_limit is not None and self._sample_limit <= new_limit):
            new_limit = self._sample_limit
        return TextDataset(self._open_samples, self._description, sample_limit=new_limit, length_hint=self._length_hint)

    def __iter__(self) -> Iterator[str]:
        label = _label(self._description)
        limit = self._sample_limit
        raw = self._open_samples()
        count = 0
        try:
            for sample in raw:
                text = _clean(sample, label)
                if text is None:
                    continue
                yield text
                count += 1
                # Stop before pulling another sample: for remote streams that is a network read.
                if limit is not None and count >= limit:
                    return
        finally:
            close = getattr(raw, "close", None)
            if close is not None:
                close()  # releases open files when the consumer stops early
        if count == 0:
            raise EmptyDatasetError(label, _empty_hint(self._description))

    def batches(self, batch_size: int) -> Iterator[list[str]]:
        """Consecutive lists of ``batch_size`` samples; the last one may be shorter."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        batch: list[str] = []
        for text in self:  # empty sources raise EmptyDatasetError from here
            batch.append(text)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def length_hint(self) -> int | None:
        """Number of samples iteration will yield, if known without reading the source.

        Exact for ``from_texts``; an upper bound for in-memory HF datasets (blank rows are
        skipped during iteration); ``None`` for files, disk and hub sources.
        """
        if self._length_hint is None:
            return None
        if self._sample_limit is None:
            return self._length_hint
        return min(self._length_hint, self._sample_limit)

    def __length_hint__(self) -> int:
        hint = self.length_hint()
        return NotImplemented if hint is None else hint

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description of the source, for run manifests."""
        return {**json.loads(json.dumps(self._description)), "sample_limit": self._sample_limit}

    def __repr__(self) -> str:
        return f"TextDataset({_label(self._description)!r}, sample_limit={self._sample_limit})"


# ---------------------------------------------------------------------- validation helpers


def _check_limit(sample_limit: int | None) -> int | None:
    if sample_limit is None:
        return None
    if isinstance(sample_limit, bool) or not isinstance(sample_limit, int) or sample_limit <= 0:
        raise DatasetError(f"sample_limit must be a positive int or None, got {sample_limit!r}")
    return sample_limit


def _check_text_field(text_field: str) -> None:
    if not isinstance(text_field, str) or not text_field:
        raise DatasetError(f"text_field must be a non-empty string, got {text_field!r}")


def _require_column(columns: Iterable[str] | None, text_field: str, label: str) -> None:
    # None means the columns are unknown until rows arrive (streamed JSON, for one).
    if columns is not None and text_field not in columns:
        raise _missing_field(text_field, label, columns)


def _missing_field(text_field: str, where: str, available: Iterable[str]) -> DatasetError:
    return DatasetError(f"{where}: text field {text_field!r} not found; available fields: {sorted(available)}")


def _clean(sample: object, label: str) -> str | None:
    if sample is None:
        return None
    if not isinstance(sample, str):
        raise DatasetError(f"dataset {label!r} yielded a {type(sample).__name__} sample; expected str")
    return sample if sample.strip() else None


# ---------------------------------------------------------------------- descriptions


def _abs(path: str | os.PathLike[str]) -> str:
    # abspath, not resolve(): manifests should show the path the user gave, minus cwd ambiguity.
    return os.path.abspath(os.fspath(path))


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def _fspath_kwargs(load_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``load_dataset`` chokes on ``Path`` objects inside ``data_files``; hand it strings instead.

    Only path-like values (and ``data_files`` containers) are touched: other kwargs such as
    ``features`` are dict subclasses that must reach the loader unchanged.
    """

    def convert(value: Any) -> Any:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return {
        key: convert(value) if key == "data_files" or isinstance(value, os.PathLike) else value
        for key, value in load_kwargs.items()
    }


def _texts_digest(items: Sequence[str | None]) -> str:
    digest = hashlib.sha256()
    for item in items:
        # A separator byte keeps ["ab", "c"] and ["a", "bc"] apart; None hashes differently from "".
        digest.update(b"\x00" if item is None else item.encode("utf-8") + b"\x01")
    return digest.hexdigest()


def _label(description: Mapping[str, Any]) -> str:
    kind = description["kind"]
    split = description.get("split")
    suffix = f"[{split}]" if split else ""
    if kind == "hf":
        config = description.get("config")
        return f"hf:{description['name']}{'/' + config if config else ''}{suffix}"
    if kind == "disk":
        return f"disk:{description['path']}{suffix}"
    if kind == "local":
        return "local:" + ",".join(description["paths"]) + suffix
    if kind == "texts":
        return f"texts({description['num_texts']})"
    return f"{kind}:{description.get('type', '?')}{suffix}"


def _empty_hint(description: Mapping[str, Any]) -> str:
    if description["kind"] == "local" and all(p.lower().endswith(".txt") for p in description["paths"]):
        return "all lines empty?"
    if description["kind"] == "texts" and description["num_texts"] == 0:
        return "no texts given"
    return "empty source, or every sample was None/blank"


# ---------------------------------------------------------------------- HF datasets


class _Cached:
    """Loads an HF dataset once, on first use, turning loader failures into ``DatasetError``."""

    def __init__(self, load: Callable[[], HFData], label: str) -> None:
        self._load = load
        self._label = label
        self._value: HFData | None = None

    def get(self) -> HFData:
        if self._value is None:
            try:
                self._value = self._load()
            except Exception as exc:
                raise DatasetError(f"could not load dataset {self._label!r}: {exc}") from exc
        return self._value


def _split_name(data: Any) -> str | None:
    split = getattr(data, "split", None)
    return None if split is None else str(split)


def _pick_split(data: HFData, split: str | None, label: str, *, check_own_split: bool = True) -> tuple[Any, str | None]:
    """The single dataset to read and the name of its split (``None`` if it has none).

    ``check_own_split=False`` when ``load_dataset`` already applied ``split`` (slices included).
    """
    from datasets import DatasetDict, IterableDatasetDict

    if isinstance(data, DatasetDict | IterableDatasetDict):
        available = list(data)
        if split is None:
            if len(available) == 1:
                return data[available[0]], available[0]
            raise DatasetError(f"{label} has several splits {available}; choose one with split=...")
        if split not in data:
            raise DatasetError(f"{label} has no split {split!r}; available splits: {available}")
        return data[split], split
    own_split = _split_name(data)
    if not check_own_split:
        return data, split
    # A single dataset that knows its split must not be silently used as a different one.
    if split is not None and own_split is not None and own_split != split:
        raise DatasetError(f"{label} holds split {own_split!r}, not the requested split {split!r}")
    return data, split if own_split is None else own_split


def _hf_samples(data: Any, text_field: str, label: str) -> Iterator[object]:
    from datasets import Dataset

    if isinstance(data, Dataset):
        _require_column(data.column_names, text_field, label)
        # with_format(None): a dataset formatted for torch/numpy would hand back arrays, not str.
        column = data.select_columns([text_field]).with_format(None)
        for batch in column.iter(batch_size=_HF_BATCH_ROWS):
            yield from batch[text_field]
        return
    _require_column(data.column_names, text_field, label)
    for row in data:
        if text_field not in row:
            raise _missing_field(text_field, label, row)
        yield row[text_field]


def _is_saved_dataset(path: Path) -> bool:
    return any((path / marker).is_file() for marker in SAVED_DATASET_MARKERS)


def _disk_source(path: Path, split: str | None, text_field: str, label: str) -> SampleSource:
    if not path.exists():
        raise DatasetError(f"no such file or directory: {str(path)!r}")

    def load() -> HFData:
        from datasets import load_from_disk

        return load_from_disk(os.fspath(path))

    loaded = _Cached(load, label)
    return lambda: _hf_samples(_pick_split(loaded.get(), split, label)[0], text_field, label)


# ---------------------------------------------------------------------- local files


def _file_source(path: Path, text_field: str, split: str | None) -> SampleSource:
    if not path.exists():
        raise DatasetError(f"no such file or directory: {str(path)!r}")
    if path.is_dir():
        if _is_saved_dataset(path):
            label = _label({"kind": "disk", "path": _abs(path), "split": split})
            return _disk_source(path, split, text_field, label)
        raise DatasetError(
            f"{str(path)!r} is a directory but not a saved HF dataset (none of {list(SAVED_DATASET_MARKERS)})"
        )
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return lambda: _read_txt(path)
    if suffix == ".jsonl":
        return lambda: _read_jsonl(path, text_field)
    if suffix == ".csv":
        return lambda: _read_csv(path, text_field)
    kinds = ", ".join(f"{ext} ({what})" for ext, what in FILE_KINDS.items())
    raise DatasetError(
        f"unsupported file type {str(path)!r}; supported: {kinds}, or a directory saved with save_to_disk"
    )


# utf-8-sig: files saved by Windows tools start with a BOM that would otherwise end up in the first
# sample (.txt) or in the first column name (.csv), breaking text_field lookup.
_ENCODING = "utf-8-sig"


def _read_txt(path: Path) -> Iterator[object]:
    with path.open(encoding=_ENCODING) as handle:
        for line in handle:
            yield line.rstrip("\n")


def _read_jsonl(path: Path, text_field: str) -> Iterator[object]:
    with path.open(encoding=_ENCODING) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{where}: invalid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
            if text_field not in record:
                raise _missing_field(text_field, where, record)
            yield record[text_field]


def _read_csv(path: Path, text_field: str) -> Iterator[object]:
    # newline="" is what the csv module requires so quoted fields may contain newlines.
    with path.open(encoding=_ENCODING, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is not None and text_field not in reader.fieldnames:
            raise _missing_field(text_field, str(path), reader.fieldnames)
        try:
            for row in reader:
                yield row[text_field]
        except csv.Error as exc:
            raise DatasetError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from exc
