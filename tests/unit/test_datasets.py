"""Unit tests for mi_crow.datasets: every source kind, built from real files and saved HF datasets."""

from __future__ import annotations

import json
import operator
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets as hf
import pytest
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

import mi_crow.datasets as mc_datasets
from mi_crow.datasets import DatasetError, EmptyDatasetError, TextDataset, as_text_dataset

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True, scope="module")
def _quiet_hf() -> Iterator[None]:
    # save_to_disk/load_dataset progress bars only clutter the test output.
    hf.disable_progress_bars()
    yield
    hf.enable_progress_bars()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    return write(path, "\n".join(json.dumps(row) for row in rows) + "\n")


def save_dataset(path: Path, texts: list[Any], field: str = "text") -> Path:
    Dataset.from_dict({field: texts, "idx": list(range(len(texts)))}).save_to_disk(str(path))
    return path


def save_dataset_dict(path: Path, splits: dict[str, list[str]]) -> Path:
    DatasetDict({name: Dataset.from_dict({"text": texts}) for name, texts in splits.items()}).save_to_disk(str(path))
    return path


def assert_json_roundtrip(ds: TextDataset) -> dict[str, Any]:
    description = ds.describe()
    assert json.loads(json.dumps(description)) == description
    return description


# ---------------------------------------------------------------------- package wiring


def test_inner_import_datasets_is_the_hf_library() -> None:
    from mi_crow.datasets import text_dataset

    assert mc_datasets is not hf
    assert hf.__name__ == "datasets" and hasattr(hf, "load_dataset")
    assert "site-packages" in hf.__file__
    # text_dataset imports the HF library lazily under the same absolute name.
    assert text_dataset.TextDataset.from_hf_dataset(Dataset.from_dict({"text": ["a"]})).describe()["type"] == (
        "Dataset"
    )


def test_public_names() -> None:
    assert set(mc_datasets.__all__) == {"TextDataset", "as_text_dataset", "DatasetError", "EmptyDatasetError"}
    assert issubclass(EmptyDatasetError, DatasetError) and issubclass(DatasetError, ValueError)


# ---------------------------------------------------------------------- from_texts and core behaviour


def test_from_texts_skips_none_and_blank_and_is_reiterable() -> None:
    ds = TextDataset.from_texts(["a", None, "  ", "", " b "])  # type: ignore[list-item]
    assert list(ds) == ["a", " b "]
    assert list(ds) == ["a", " b "]
    assert ds.length_hint() == 2
    assert operator.length_hint(ds) == 2


def test_from_texts_copies_input() -> None:
    texts = ["a", "b"]
    ds = TextDataset.from_texts(texts)
    texts.append("c")
    assert list(ds) == ["a", "b"]


def test_from_texts_rejects_a_bare_string_and_non_str_items() -> None:
    with pytest.raises(DatasetError, match="wrap it in a list"):
        TextDataset.from_texts("hello")
    with pytest.raises(DatasetError, match="item 1 is int"):
        TextDataset.from_texts(["a", 3])  # type: ignore[list-item]


def test_len_is_not_defined() -> None:
    with pytest.raises(TypeError):
        len(TextDataset.from_texts(["a"]))  # type: ignore[arg-type]


def test_sample_limit_caps_output_and_hint() -> None:
    ds = TextDataset.from_texts(["a", "", "b", "c", "d"], sample_limit=2)
    assert list(ds) == ["a", "b"]
    assert ds.length_hint() == 2
    assert TextDataset.from_texts(["a"], sample_limit=5).length_hint() == 1


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "3"])
def test_invalid_sample_limit(bad: Any) -> None:
    with pytest.raises(DatasetError, match="sample_limit"):
        TextDataset.from_texts(["a"], sample_limit=bad)


def test_limit_keeps_the_tighter_cap() -> None:
    ds = TextDataset.from_texts(list("abcdef"), sample_limit=3)
    assert ds.limit(5).sample_limit == 3
    assert ds.limit(2).sample_limit == 2
    assert ds.limit(None).sample_limit == 3
    assert TextDataset.from_texts(["a"]).limit(4).sample_limit == 4
    assert list(ds.limit(2)) == ["a", "b"]
    assert ds.sample_limit == 3  # the original is untouched


def test_empty_texts_raise_on_iteration_and_in_batches() -> None:
    for texts in ([], ["", None, " \n"]):
        ds = TextDataset.from_texts(texts)
        with pytest.raises(EmptyDatasetError, match="produced no text samples"):
            list(ds)
        with pytest.raises(EmptyDatasetError):
            list(ds.batches(2))
    with pytest.raises(EmptyDatasetError, match="no texts given"):
        list(TextDataset.from_texts([]))


def test_batches_sizes() -> None:
    ds = TextDataset.from_texts([str(i) for i in range(7)])
    assert [len(b) for b in ds.batches(3)] == [3, 3, 1]
    assert [len(b) for b in ds.batches(7)] == [7]
    assert [b for b in ds.batches(1)][-1] == ["6"]
    assert [len(b) for b in ds.limit(4).batches(2)] == [2, 2]


@pytest.mark.parametrize("bad", [0, -2, True, 2.0])
def test_batches_rejects_bad_size(bad: Any) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        next(TextDataset.from_texts(["a"]).batches(bad))


def test_texts_describe_and_repr() -> None:
    a = assert_json_roundtrip(TextDataset.from_texts(["ab", "c"], sample_limit=1))
    b = assert_json_roundtrip(TextDataset.from_texts(["a", "bc"]))
    assert a["kind"] == "texts" and a["num_texts"] == 2 and a["sample_limit"] == 1
    assert a["sha256"] != b["sha256"]
    assert "texts(2)" in repr(TextDataset.from_texts(["a", "b"]))


def test_non_str_samples_are_rejected_during_iteration(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "n.jsonl", [{"text": "ok"}, {"text": 5}])
    with pytest.raises(DatasetError, match="yielded a int sample"):
        list(TextDataset.from_files([path]))


@pytest.mark.parametrize("bad", ["", None, 3])
def test_invalid_text_field(bad: Any, tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "x\n")
    with pytest.raises(DatasetError, match="text_field"):
        TextDataset.from_files([path], text_field=bad)


# ---------------------------------------------------------------------- local files


def test_txt_lines_blank_skipped_crlf_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes("\ufefffirst\r\n\r\n  \nsecond line \nlast".encode())
    ds = TextDataset.from_files([path])
    assert list(ds) == ["first", "second line ", "last"]
    assert ds.length_hint() is None


def test_txt_streams_and_stops_at_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "big.txt", "".join(f"line {i}\n" for i in range(1000)))
    ds = TextDataset.from_files([path], sample_limit=3)
    assert list(ds) == ["line 0", "line 1", "line 2"]
    iterator = iter(TextDataset.from_files([path]))
    assert next(iterator) == "line 0"
    iterator.close()  # closing early must release the file without error


def test_empty_txt_names_source(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "\n \n\n")
    with pytest.raises(EmptyDatasetError, match=r"local:.*a\.txt.*all lines empty\?"):
        list(TextDataset.from_files([path]))


def test_multiple_files_are_chained_in_order(tmp_path: Path) -> None:
    txt = write(tmp_path / "a.TXT", "t1\nt2\n")
    jsonl = write_jsonl(tmp_path / "b.jsonl", [{"text": "j1"}])
    csv_path = write(tmp_path / "c.csv", "text,other\nc1,x\n")
    ds = TextDataset.from_files([txt, str(jsonl), csv_path])
    assert list(ds) == ["t1", "t2", "j1", "c1"]
    description = assert_json_roundtrip(ds)
    assert description["kind"] == "local"
    assert description["paths"] == [str(txt), str(jsonl), str(csv_path)]
    assert description["text_field"] == "text" and description["sample_limit"] is None
    assert "split" not in description


def test_from_files_accepts_a_single_path(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "x\n")
    assert list(TextDataset.from_files(path)) == ["x"]  # type: ignore[arg-type]
    assert list(TextDataset.from_files(str(path))) == ["x"]  # type: ignore[arg-type]


def test_jsonl_field_nulls_and_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.jsonl",
        '{"body": "one", "id": 1}\n\n{"body": null, "id": 2}\n{"body": "two", "id": 3}\n',
    )
    assert list(TextDataset.from_files([path], text_field="body")) == ["one", "two"]


def test_jsonl_missing_field_names_available_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"body": "x", "id": 1}])
    with pytest.raises(DatasetError, match=r"a\.jsonl:1.*'text' not found.*\['body', 'id'\]"):
        list(TextDataset.from_files([path]))


def test_jsonl_bad_lines(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.jsonl", '{"text": "ok"}\n{"text": \n')
    with pytest.raises(DatasetError, match=r"broken\.jsonl:2: invalid JSON"):
        list(TextDataset.from_files([broken]))
    not_object = write(tmp_path / "list.jsonl", '["a", "b"]\n')
    with pytest.raises(DatasetError, match="expected a JSON object, got list"):
        list(TextDataset.from_files([not_object]))


def test_csv_column_bom_and_multiline_fields(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes('\ufeffbody,label\n"multi\nline",1\nplain,0\n,1\nshort\n'.encode())
    assert list(TextDataset.from_files([path], text_field="body")) == ["multi\nline", "plain", "short"]
    labels = TextDataset.from_files([path], text_field="label")
    assert list(labels) == ["1", "0", "1"]  # the short row has no label: None, skipped


def test_csv_missing_column_names_available_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "body,label\nx,1\n")
    with pytest.raises(DatasetError, match=r"'text' not found.*\['body', 'label'\]"):
        list(TextDataset.from_files([path]))


def test_csv_empty_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(EmptyDatasetError):
        list(TextDataset.from_files([write(tmp_path / "empty.csv", "")]))
    with pytest.raises(EmptyDatasetError):
        list(TextDataset.from_files([write(tmp_path / "header.csv", "text\n")]))
    # A field over csv.field_size_limit() is the csv module's own parse error.
    huge = write(tmp_path / "huge.csv", 'text\n"' + "x" * 200_000 + '"\n')
    with pytest.raises(DatasetError, match=r"huge\.csv.*malformed CSV"):
        list(TextDataset.from_files([huge]))


def test_unknown_extension_names_file_and_kinds(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.md", "x")
    with pytest.raises(DatasetError, match=r"notes\.md.*\.txt.*\.jsonl.*\.csv"):
        TextDataset.from_files([path])


def test_missing_file_and_empty_path_list(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no such file or directory.*nope\.txt"):
        TextDataset.from_files([tmp_path / "nope.txt"])
    with pytest.raises(DatasetError, match="at least one path"):
        TextDataset.from_files([])


def test_plain_directory_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(DatasetError, match="not a saved HF dataset"):
        TextDataset.from_files([tmp_path / "dir"])


def test_saved_dataset_directories_via_from_files(tmp_path: Path) -> None:
    single = save_dataset(tmp_path / "single", ["s1", "", "s2"])
    splits = save_dataset_dict(tmp_path / "splits", {"train": ["tr"], "test": ["te"]})
    txt = write(tmp_path / "a.txt", "t\n")
    assert list(TextDataset.from_files([single, txt])) == ["s1", "s2", "t"]
    ds = TextDataset.from_files([splits], split="test")
    assert list(ds) == ["te"]
    assert assert_json_roundtrip(ds)["split"] == "test"
    with pytest.raises(DatasetError, match=r"several splits \['train', 'test'\]"):
        list(TextDataset.from_files([splits]))


# ---------------------------------------------------------------------- from_disk


def test_from_disk_dataset(tmp_path: Path) -> None:
    path = save_dataset(tmp_path / "ds", ["a", None, "b", "c"])
    ds = TextDataset.from_disk(path, sample_limit=2)
    assert list(ds) == ["a", "b"]
    assert ds.length_hint() is None
    description = assert_json_roundtrip(ds)
    assert description == {
        "kind": "disk",
        "path": str(path),
        "split": None,
        "text_field": "text",
        "sample_limit": 2,
    }


def test_from_disk_other_field_and_missing_field(tmp_path: Path) -> None:
    path = save_dataset(tmp_path / "ds", ["a"], field="content")
    assert list(TextDataset.from_disk(path, text_field="content")) == ["a"]
    with pytest.raises(DatasetError, match=r"'text' not found.*\['content', 'idx'\]"):
        list(TextDataset.from_disk(path))


def test_from_disk_non_str_column(tmp_path: Path) -> None:
    path = save_dataset(tmp_path / "ds", ["a"])
    with pytest.raises(DatasetError, match="yielded a int sample"):
        list(TextDataset.from_disk(path, text_field="idx"))


def test_from_disk_dataset_dict_splits(tmp_path: Path) -> None:
    multi = save_dataset_dict(tmp_path / "multi", {"train": ["a", "b"], "validation": ["v"]})
    one = save_dataset_dict(tmp_path / "one", {"only": ["x"]})
    assert list(TextDataset.from_disk(multi, split="validation")) == ["v"]
    assert list(TextDataset.from_disk(one)) == ["x"]
    with pytest.raises(DatasetError, match=r"split=\.\.\."):
        list(TextDataset.from_disk(multi))
    with pytest.raises(DatasetError, match=r"no split 'test'; available splits: \['train', 'validation'\]"):
        list(TextDataset.from_disk(multi, split="test"))


def test_from_disk_dataset_with_a_different_split(tmp_path: Path) -> None:
    path = tmp_path / "test_split"
    Dataset.from_dict({"text": ["a"]}, split=hf.Split.TEST).save_to_disk(str(path))
    assert list(TextDataset.from_disk(path, split="test")) == ["a"]
    with pytest.raises(DatasetError, match="holds split 'test', not the requested split 'train'"):
        list(TextDataset.from_disk(path, split="train"))
    # A dataset saved without split info accepts whatever split the caller names.
    untagged = save_dataset(tmp_path / "untagged", ["b"])
    assert list(TextDataset.from_disk(untagged, split="train")) == ["b"]


def test_from_disk_missing_and_unloadable(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file or directory"):
        TextDataset.from_disk(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    ds = TextDataset.from_disk(tmp_path / "junk")  # loading is deferred to iteration
    with pytest.raises(DatasetError, match="could not load dataset 'disk:"):
        list(ds)


def test_from_disk_loads_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_dataset(tmp_path / "ds", ["a"])
    calls: list[str] = []
    real = hf.load_from_disk

    def counting(p: str) -> Any:
        calls.append(p)
        return real(p)

    monkeypatch.setattr(hf, "load_from_disk", counting)
    ds = TextDataset.from_disk(path)
    assert calls == []
    assert list(ds) == ["a"] and list(ds) == ["a"]
    assert len(calls) == 1


# ---------------------------------------------------------------------- from_hf (offline, json builder)


@pytest.fixture
def jsonl_file(tmp_path: Path) -> Path:
    rows = [{"text": f"doc {i}", "n": i} for i in range(5)] + [{"text": "", "n": 5}, {"text": None, "n": 6}]
    return write_jsonl(tmp_path / "hf.jsonl", rows)


@pytest.mark.parametrize("streaming", [False, True])
def test_from_hf_json_builder(jsonl_file: Path, tmp_path: Path, streaming: bool) -> None:
    ds = TextDataset.from_hf("json", streaming=streaming, data_files=[jsonl_file], cache_dir=str(tmp_path / "cache"))
    assert list(ds) == [f"doc {i}" for i in range(5)]
    assert list(ds.limit(2)) == ["doc 0", "doc 1"]
    description = assert_json_roundtrip(ds)
    assert description["kind"] == "hf" and description["name"] == "json"
    assert description["split"] == "train" and description["streaming"] is streaming
    assert description["load_kwargs"]["data_files"] == [str(jsonl_file)]


@pytest.mark.parametrize("streaming", [False, True])
def test_from_hf_missing_field_names_columns(jsonl_file: Path, tmp_path: Path, streaming: bool) -> None:
    ds = TextDataset.from_hf(
        "json",
        text_field="body",
        streaming=streaming,
        data_files=str(jsonl_file),
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(DatasetError, match=r"hf:json\[train\].*'body' not found.*\['n', 'text'\]"):
        list(ds)


def test_from_hf_accepts_path_objects_in_load_kwargs(jsonl_file: Path, tmp_path: Path) -> None:
    ds = TextDataset.from_hf("json", split="test", data_files={"test": jsonl_file}, cache_dir=tmp_path / "c")
    assert len(list(ds)) == 5
    assert ds.describe()["load_kwargs"] == {"data_files": {"test": str(jsonl_file)}, "cache_dir": str(tmp_path / "c")}


def test_from_hf_split_slices(jsonl_file: Path, tmp_path: Path) -> None:
    ds = TextDataset.from_hf("json", split="train[:2]", data_files=str(jsonl_file), cache_dir=str(tmp_path / "c"))
    assert list(ds) == ["doc 0", "doc 1"]


def test_from_hf_without_split_uses_the_only_split(jsonl_file: Path, tmp_path: Path) -> None:
    ds = TextDataset.from_hf("json", split=None, data_files=str(jsonl_file), cache_dir=str(tmp_path / "c"))
    assert len(list(ds)) == 5


def test_from_hf_is_lazy_and_wraps_load_errors(tmp_path: Path) -> None:
    ds = TextDataset.from_hf(
        "json", config=None, data_files=str(tmp_path / "absent.jsonl"), cache_dir=str(tmp_path / "c")
    )
    with pytest.raises(DatasetError, match=r"could not load dataset 'hf:json\[train\]'"):
        list(ds)


def test_from_hf_describe_config_and_odd_kwargs() -> None:
    ds = TextDataset.from_hf("wikitext", config="wikitext-2-raw-v1", revision=object(), num_proc=2)
    description = assert_json_roundtrip(ds)
    assert description["config"] == "wikitext-2-raw-v1"
    assert description["load_kwargs"]["num_proc"] == 2
    assert description["load_kwargs"]["revision"].startswith("<object")
    assert "hf:wikitext/wikitext-2-raw-v1[train]" in repr(ds)


# ---------------------------------------------------------------------- in-memory HF objects


def test_from_hf_dataset_in_memory() -> None:
    data = Dataset.from_dict({"text": ["a", "", "b"], "n": [1, 2, 3]})
    ds = TextDataset.from_hf_dataset(data, sample_limit=5)
    assert list(ds) == ["a", "b"]
    assert ds.length_hint() == 3  # an upper bound: blank rows are found while iterating
    description = assert_json_roundtrip(ds)
    assert description["kind"] == "memory" and description["num_rows"] == 3
    with pytest.raises(DatasetError, match=r"'body' not found.*\['n', 'text'\]"):
        TextDataset.from_hf_dataset(data, text_field="body")


def test_from_hf_dataset_formatted_for_numpy_still_yields_str() -> None:
    data = Dataset.from_dict({"text": ["a", "b"]}).with_format("numpy")
    assert [type(t) for t in TextDataset.from_hf_dataset(data)] == [str, str]


def test_from_hf_dataset_iterable_without_known_columns() -> None:
    def rows() -> Iterator[dict[str, Any]]:
        yield {"text": "a"}
        yield {"other": "b"}

    ds = TextDataset.from_hf_dataset(IterableDataset.from_generator(rows))
    assert ds.length_hint() is None
    with pytest.raises(DatasetError, match=r"'text' not found.*\['other'\]"):
        list(ds)


def test_from_hf_dataset_dicts() -> None:
    splits = DatasetDict({"train": Dataset.from_dict({"text": ["t"]}), "test": Dataset.from_dict({"text": ["x"]})})
    ds = TextDataset.from_hf_dataset(splits, split="test")
    assert list(ds) == ["x"]
    assert ds.describe()["split"] == "test" and ds.describe()["type"] == "DatasetDict"
    with pytest.raises(DatasetError, match="several splits"):
        TextDataset.from_hf_dataset(splits)
    iterable = IterableDatasetDict({"train": Dataset.from_dict({"text": ["i"]}).to_iterable_dataset()})
    only = TextDataset.from_hf_dataset(iterable)
    assert list(only) == ["i"] and only.describe()["split"] == "train"


def test_empty_hf_dataset_raises() -> None:
    ds = TextDataset.from_hf_dataset(Dataset.from_dict({"text": ["", None]}))
    with pytest.raises(EmptyDatasetError, match="memory:Dataset"):
        list(ds)


# ---------------------------------------------------------------------- as_text_dataset


def test_resolve_text_dataset_passthrough_and_limit() -> None:
    ds = TextDataset.from_texts(["a", "b", "c"])
    assert as_text_dataset(ds) is ds
    limited = as_text_dataset(ds, sample_limit=2)
    assert list(limited) == ["a", "b"] and ds.sample_limit is None


def test_resolve_str_paths(tmp_path: Path) -> None:
    txt = write(tmp_path / "a.txt", "x\ny\n")
    saved = save_dataset_dict(tmp_path / "dd", {"train": ["t"], "test": ["u"]})
    assert list(as_text_dataset(str(txt), sample_limit=1)) == ["x"]
    assert list(as_text_dataset(str(saved), split="test")) == ["u"]
    assert list(as_text_dataset(txt)) == ["x", "y"]
    with pytest.raises(DatasetError, match=r"not an existing file.*wrap it in a list.*\"type\": \"hf\""):
        as_text_dataset("wikitext")


def test_resolve_lists(tmp_path: Path) -> None:
    txt = write(tmp_path / "a.txt", "from file\n")
    # Strings are texts even when one happens to be an existing path.
    assert list(as_text_dataset([str(txt), "hello"])) == [str(txt), "hello"]
    assert list(as_text_dataset(("a", None, "b"))) == ["a", "b"]
    assert list(as_text_dataset([txt, txt])) == ["from file", "from file"]
    with pytest.raises(DatasetError, match=r"only str.*or only Paths"):
        as_text_dataset([txt, "hello"])
    with pytest.raises(EmptyDatasetError):
        list(as_text_dataset([]))


def test_resolve_hf_objects() -> None:
    splits = DatasetDict({"train": Dataset.from_dict({"body": ["t"]}), "test": Dataset.from_dict({"body": ["u"]})})
    assert list(as_text_dataset(splits, split="test", text_field="body")) == ["u"]
    assert list(as_text_dataset(Dataset.from_dict({"text": ["a", "b"]}), sample_limit=1)) == ["a"]


def test_resolve_dict_specs(tmp_path: Path, jsonl_file: Path) -> None:
    txt = write(tmp_path / "a.txt", "l1\nl2\n")
    csv_path = write(tmp_path / "b.csv", "body\nc1\n")
    saved = save_dataset_dict(tmp_path / "dd", {"train": ["t"], "test": ["u"]})
    assert list(as_text_dataset({"type": "texts", "texts": ["x", "y"], "sample_limit": 1})) == ["x"]
    assert list(as_text_dataset({"type": "local", "paths": str(txt)})) == ["l1", "l2"]
    assert list(as_text_dataset({"type": "local", "paths": [str(csv_path)]}, text_field="body")) == ["c1"]
    assert list(as_text_dataset({"type": "disk", "path": str(saved), "split": "test"})) == ["u"]
    assert list(as_text_dataset({"type": "disk", "path": str(saved)}, split="train")) == ["t"]
    hf_spec = {
        "type": "hf",
        "name": "json",
        "text_field": "text",
        "streaming": True,
        "load_kwargs": {"data_files": str(jsonl_file), "cache_dir": str(tmp_path / "cache")},
    }
    ds = as_text_dataset(hf_spec, sample_limit=2)
    assert list(ds) == ["doc 0", "doc 1"]
    assert ds.describe()["split"] == "train" and ds.describe()["sample_limit"] == 2


def test_describe_output_can_be_resolved_again(tmp_path: Path, jsonl_file: Path) -> None:
    sources = [
        TextDataset.from_files([write(tmp_path / "a.txt", "x\ny\n")], sample_limit=1),
        TextDataset.from_disk(save_dataset(tmp_path / "ds", ["d"])),
        TextDataset.from_hf("json", data_files=str(jsonl_file), cache_dir=str(tmp_path / "cache")),
    ]
    for ds in sources:
        again = as_text_dataset(json.loads(json.dumps(ds.describe())))
        assert list(again) == list(ds)
        assert again.describe() == ds.describe()


def test_bad_dict_specs() -> None:
    with pytest.raises(DatasetError, match=r"needs a 'type' among \['disk', 'hf', 'local', 'texts'\]"):
        as_text_dataset({"name": "x"})
    with pytest.raises(DatasetError, match="Accepted dataset forms"):
        as_text_dataset({"type": "ftp"})
    with pytest.raises(DatasetError, match=r"unknown keys \['text_feild'\]"):
        as_text_dataset({"type": "hf", "name": "x", "text_feild": "body"})
    with pytest.raises(DatasetError, match="'disk' dataset spec needs 'path'"):
        as_text_dataset({"type": "disk"})
    with pytest.raises(DatasetError, match="load_kwargs"):
        as_text_dataset({"type": "hf", "name": "x", "load_kwargs": ["data_files"]})


@pytest.mark.parametrize("obj", [42, b"bytes", {"a", "b"}, None])
def test_unaccepted_objects_list_accepted_forms(obj: Any) -> None:
    with pytest.raises(DatasetError, match=r"cannot make a text dataset from .*Accepted dataset forms"):
        as_text_dataset(obj)


def test_hf_check_skips_import_when_library_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "datasets")
    with pytest.raises(DatasetError, match="cannot make a text dataset from object"):
        as_text_dataset(object())
    assert "datasets" not in sys.modules
