"""Unit tests for mi_crow.store: atomic writes, names, shards, manifests, activation runs and LocalStore."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load

from mi_crow.store import (
    ActivationRun,
    ActivationRunWriter,
    CorruptShardError,
    IncompleteRunError,
    InvalidNameError,
    LayerRecord,
    LocalStore,
    RunManifest,
    ShardRecord,
    atomic_write_bytes,
    atomic_write_json,
    default_store_root,
    model_key,
    new_id,
    read_json,
    read_shard,
    validate_name,
    write_shard,
)
from mi_crow.store.activation_run import ACTIVATIONS, POSITIONS, SAMPLE_INDEX, TOKEN_IDS
from mi_crow.store.local_store import STORE_ENV

pytestmark = pytest.mark.unit

D = 4  # width of every test layer: small so shards stay tiny


# ---------------------------------------------------------------------- helpers


def rows(start: int, n: int, d: int = D) -> torch.Tensor:
    """Rows whose every value is the row's global id, so any row can be identified after shuffling."""
    return torch.arange(start, start + n, dtype=torch.float32).unsqueeze(1).repeat(1, d)


def row_ids(batch: torch.Tensor) -> list[int]:
    return [int(v) for v in batch[:, 0].tolist()]


def sizes(batches: list[torch.Tensor]) -> list[int]:
    return [b.shape[0] for b in batches]


def add(writer: ActivationRunWriter, layer: str, acts: torch.Tensor) -> ShardRecord:
    n = acts.shape[0]
    return writer.add_shard(layer, acts, torch.arange(n), torch.arange(n), torch.zeros(n, dtype=torch.long))


def make_run(
    store: LocalStore,
    shard_sizes: list[int],
    *,
    model_id: str = "org/model",
    run_id: str = "run-1",
    layer: str = "layer_a",
    finish: bool = True,
) -> ActivationRunWriter:
    writer = store.create_run(model_id, {layer: (D, "float32")}, run_id=run_id)
    start = 0
    for n in shard_sizes:
        add(writer, layer, rows(start, n))
        start += n
    if finish:
        writer.finish(n_samples=len(shard_sizes))
    return writer


def leftover_temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".deleted-")]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


class CountingRun(ActivationRun):
    """Records every shard read, so tests can see how many shards a reader holds at once."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(run_dir)
        self.reads: list[int] = []

    def read_shard(self, layer: str, index: int) -> dict[str, torch.Tensor]:
        self.reads.append(index)
        return super().read_shard(layer, index)


# ---------------------------------------------------------------------- atomic writes


def test_atomic_write_bytes_creates_parents_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.bin"
    atomic_write_bytes(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_atomic_write_replaces_content_wholly(tmp_path: Path) -> None:
    # A shorter second write must not leave a tail of the first one (no in-place overwrite).
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"x" * 1000)
    atomic_write_bytes(target, memoryview(b"short"))
    assert target.read_bytes() == b"short"
    assert leftover_temp_files(tmp_path) == []


def test_atomic_write_failure_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, 12345)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_atomic_write_json_round_trip_sorted_with_newline(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    text = target.read_text()
    assert text.endswith("\n")
    assert text.index('"a"') < text.index('"b"')
    assert read_json(target) == {"a": [1, 2], "b": 1}
    atomic_write_json(target, {"c": None})
    assert read_json(target) == {"c": None}
    assert leftover_temp_files(tmp_path) == []


# ---------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name", ["run-1", "a", "A.b_c-9", "0abc", "x" * 128, "run-20240101T000000-deadbeef", "layer.0.attn"]
)
def test_validate_name_accepts_normal_ids(name: str) -> None:
    assert validate_name(name) == name


UNSAFE_NAMES: list[object] = [
    "",
    "..",
    "a..b",
    "../etc",
    "a/b",
    "/abs",
    ".hidden",
    "-dash",
    "_under",
    "x" * 129,
    "sp ace",
    "a\\b",
    "é",
    "a\nb",
    None,
    5,
]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_validate_name_rejects_unsafe(name: object) -> None:
    with pytest.raises(InvalidNameError, match="invalid run id"):
        validate_name(name, "run id")  # type: ignore[arg-type]


def test_validate_name_rejects_trailing_newline() -> None:
    with pytest.raises(InvalidNameError):
        validate_name("run-1\n")


def test_model_key_never_contains_a_newline() -> None:
    assert "\n" not in model_key("gpt2\n")


def test_invalid_name_error_is_value_error() -> None:
    assert issubclass(InvalidNameError, ValueError)


@pytest.mark.parametrize(
    ("model_id", "key"),
    [("org/name", "org--name"), ("gpt2", "gpt2"), ("EleutherAI/pythia-70m", "EleutherAI--pythia-70m")],
)
def test_model_key_hub_ids_stay_readable(model_id: str, key: str) -> None:
    assert model_key(model_id) == key


def test_model_key_local_paths_get_basename_and_hash() -> None:
    a, b = model_key("/data/run1/model"), model_key("/data/run2/model")
    assert a.startswith("model-") and b.startswith("model-")
    assert a != b  # same basename, different directory: must not share a store directory
    assert model_key("/data/run1/model") == a  # stable
    for key in (a, b, model_key("./model"), model_key("~/ckpt"), model_key("a/b/c")):
        assert validate_name(key) == key


@pytest.mark.parametrize("model_id", ["..", "../..", "/", "./", "org/..", "a b/c d", "x" * 300, "org/na..me"])
def test_model_key_odd_ids_become_single_safe_components(model_id: str) -> None:
    key = model_key(model_id)
    assert "/" not in key and key not in ("", ".", "..")
    assert len(key) <= 128
    assert not key.startswith(".")


def test_model_key_rejects_empty() -> None:
    with pytest.raises(InvalidNameError):
        model_key("")


# ---------------------------------------------------------------------- shards


def test_write_shard_returns_sha_of_file_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "s" / "00000.safetensors"
    tensors = {"a": torch.arange(6.0).reshape(2, 3).t(), "b": torch.tensor([1, 2], dtype=torch.int32)}
    sha = write_shard(path, tensors, metadata={"k": "v"})
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    out = read_shard(path, sha)
    assert torch.equal(out["a"], tensors["a"]) and torch.equal(out["b"], tensors["b"])
    assert read_shard(path)["b"].dtype == torch.int32  # no checksum given: still readable


def test_read_shard_unreadable_bytes_without_checksum(tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(CorruptShardError, match="not a readable safetensors file") as err:
        read_shard(path)
    assert str(path) in str(err.value)


def test_read_shard_missing(tmp_path: Path) -> None:
    with pytest.raises(CorruptShardError, match="missing"):
        read_shard(tmp_path / "nope.safetensors", "00")


# ---------------------------------------------------------------------- manifest


def test_manifest_round_trip_and_token_counts() -> None:
    m = RunManifest(
        run_id="r",
        model_id="m",
        layers={
            "a": LayerRecord("a", 4, "float32", [ShardRecord("a/0", 3, "x"), ShardRecord("a/1", 2, "y")]),
            "b": LayerRecord("b", 8, "float16"),
        },
        config={"k": 1},
    )
    assert m.layers["a"].n_tokens == 5 and m.layers["b"].n_tokens == 0
    assert m.n_tokens == 5
    d = m.to_dict()
    assert d["n_tokens"] == 5 and d["layers"]["a"]["n_tokens"] == 5
    back = RunManifest.from_dict(json.loads(json.dumps(d)))
    assert back == m
    assert RunManifest(run_id="r", model_id="m", layers={}).n_tokens == 0


def test_manifest_from_minimal_dict_uses_defaults() -> None:
    m = RunManifest.from_dict({"run_id": "r", "model_id": "m", "layers": {}})
    assert (m.status, m.n_samples, m.error, m.version, m.config) == ("running", 0, None, 1, {})


# ---------------------------------------------------------------------- runs: write and read


def test_create_run_add_shard_finish_round_trip(store: LocalStore) -> None:
    writer = store.create_run(
        "org/model", {"layer_a": (D, "float32"), "layer_b": (2, "float16")}, run_id="run-1", config={"c": 1}
    )
    assert writer.manifest_path == store.run_dir("org/model", "run-1") / "manifest.json"
    assert read_json(writer.manifest_path)["status"] == "running"
    rec = add(writer, "layer_a", rows(0, 3))
    add(writer, "layer_a", rows(3, 2))
    writer.add_shard(
        "layer_b", torch.ones(5, 2, dtype=torch.float16), torch.arange(5), torch.arange(5), torch.arange(5)
    )
    assert rec.file == "layer_a/00000.safetensors" and rec.n_tokens == 3
    manifest = writer.finish(n_samples=2)
    assert manifest.status == "complete"

    run = store.open_run("org/model", "run-1")
    assert (run.run_id, run.model_id, run.n_samples, run.n_tokens) == ("run-1", "org/model", 2, 5)
    assert run.layers == ["layer_a", "layer_b"]
    assert run.d_model("layer_a") == D and run.d_model("layer_b") == 2
    assert run.manifest.config == {"c": 1}
    assert run.manifest_path.is_file()
    shard = run.read_shard("layer_a", 1)
    assert torch.equal(shard[ACTIVATIONS], rows(3, 2))
    assert shard[TOKEN_IDS].dtype == torch.int32 and shard[POSITIONS].dtype == torch.int32
    assert shard[SAMPLE_INDEX].dtype == torch.int64
    assert run.read_shard("layer_b", 0)[ACTIVATIONS].dtype == torch.float16
    got = [s[ACTIVATIONS] for s in run.iter_shards("layer_a", order=[1, 0])]
    assert torch.equal(got[0], rows(3, 2)) and torch.equal(got[1], rows(0, 3))
    assert torch.equal(torch.cat(list(run.iter_batches("layer_a", 100))), rows(0, 5))
    # The shard file carries its own metadata, so it stands alone without the manifest.
    raw = (run.run_dir / "layer_a" / "00000.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + header_len])["__metadata__"] == {"layer": "layer_a", "run_id": "run-1"}
    assert leftover_temp_files(store.root) == []


def test_manifest_on_disk_lists_shards_with_tokens_sha_and_status(store: LocalStore) -> None:
    writer = make_run(store, [3, 4], finish=False)
    on_disk = read_json(writer.manifest_path)
    assert on_disk["status"] == "running"
    shards = on_disk["layers"]["layer_a"]["shards"]
    assert [s["n_tokens"] for s in shards] == [3, 4]
    for s in shards:
        data = (writer.run_dir / s["file"]).read_bytes()
        assert s["sha256"] == hashlib.sha256(data).hexdigest()
    assert on_disk["layers"]["layer_a"]["n_tokens"] == 7 and on_disk["n_tokens"] == 7
    writer.finish(n_samples=9)
    on_disk = read_json(writer.manifest_path)
    assert (on_disk["status"], on_disk["n_samples"]) == ("complete", 9)
    assert on_disk["updated_at"] >= on_disk["created_at"]


def test_running_run_requires_opt_in(store: LocalStore) -> None:
    make_run(store, [2], finish=False)
    with pytest.raises(IncompleteRunError, match="'run-1' is running"):
        store.open_run("org/model", "run-1")
    run = store.open_run("org/model", "run-1", require_complete=False)
    assert run.manifest.status == "running" and run.n_tokens == 2
    with pytest.raises(IncompleteRunError):
        store.find_run("run-1")
    assert store.find_run("run-1", require_complete=False).run_id == "run-1"


def test_failed_run_requires_opt_in_and_reports_error(store: LocalStore) -> None:
    writer = make_run(store, [2], finish=False)
    writer.fail("CUDA out of memory")
    with pytest.raises(IncompleteRunError, match=r"is failed \(CUDA out of memory\)"):
        store.open_run("org/model", "run-1")
    run = store.open_run("org/model", "run-1", require_complete=False)
    assert run.manifest.error == "CUDA out of memory"
    assert torch.equal(next(run.iter_batches("layer_a", 2)), rows(0, 2))


def test_open_missing_run(store: LocalStore) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing manifest\.json"):
        store.open_run("org/model", "nope")


def test_create_run_twice_same_id(store: LocalStore) -> None:
    make_run(store, [1])
    with pytest.raises(FileExistsError, match="run-1"):
        store.create_run("org/model", {"layer_a": (D, "float32")}, run_id="run-1")
    # The same id under another model is a different run.
    assert store.create_run("other", {"layer_a": (D, "float32")}, run_id="run-1").manifest.model_id == "other"


def test_create_run_generates_unique_ids(store: LocalStore) -> None:
    a = store.create_run("m", {"l": (D, "float32")})
    b = store.create_run("m", {"l": (D, "float32")})
    assert a.manifest.run_id != b.manifest.run_id
    assert a.manifest.run_id.startswith("run-")


def test_create_run_rejects_bad_layer_and_run_names(store: LocalStore) -> None:
    with pytest.raises(InvalidNameError):
        store.create_run("m", {"../x": (D, "float32")}, run_id="r")
    with pytest.raises(InvalidNameError):
        store.create_run("m", {"l": (D, "float32")}, run_id="../r")
    assert not (store.root / "activations" / "m" / "r").exists()


@pytest.mark.parametrize("shape", [(3, D + 1), (3,), (3, D, 1)])
def test_add_shard_wrong_width(store: LocalStore, shape: tuple[int, ...]) -> None:
    writer = make_run(store, [], finish=False)
    with pytest.raises(ValueError, match=rf"expected activations of shape \(n, {D}\)"):
        writer.add_shard("layer_a", torch.zeros(shape), torch.arange(3), torch.arange(3), torch.arange(3))
    assert writer.manifest.layers["layer_a"].shards == []


def test_add_shard_mismatched_lengths(store: LocalStore) -> None:
    writer = make_run(store, [], finish=False)
    with pytest.raises(ValueError, match="same length"):
        writer.add_shard("layer_a", rows(0, 3), torch.arange(3), torch.arange(2), torch.arange(3))
    assert writer.manifest.layers["layer_a"].shards == []


def test_add_shard_unknown_layer(store: LocalStore) -> None:
    writer = make_run(store, [], finish=False)
    with pytest.raises(KeyError):
        add(writer, "nope", rows(0, 1))


def test_failed_add_shard_leaves_no_phantom_shard(store: LocalStore) -> None:
    writer = make_run(store, [], finish=False)
    # A plain file where the layer directory should be makes the shard write fail for real.
    blocker = writer.run_dir / "layer_a"
    blocker.write_text("not a directory")
    with pytest.raises(OSError):
        add(writer, "layer_a", rows(0, 2))
    blocker.unlink()
    add(writer, "layer_a", rows(2, 3))
    writer.finish(n_samples=1)
    run = store.open_run("org/model", "run-1")
    assert [s.n_tokens for s in run.layer("layer_a").shards] == [3]
    assert row_ids(torch.cat(list(run.iter_batches("layer_a", 10)))) == [2, 3, 4]


def test_concurrent_add_shard_same_layer(store: LocalStore) -> None:
    writer = store.create_run("org/model", {"layer_a": (D, "float32")}, run_id="run-1")
    n_threads, per_thread, size = 8, 4, 3
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait()
            for k in range(per_thread):
                add(writer, "layer_a", rows((t * per_thread + k) * size, size))
        except BaseException as exc:  # surfaced by the main thread's assert
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    writer.finish(n_samples=n_threads * per_thread)

    on_disk = RunManifest.from_dict(read_json(writer.manifest_path))
    shards = on_disk.layers["layer_a"].shards
    files = [s.file for s in shards]
    assert len(files) == len(set(files)) == n_threads * per_thread
    assert sorted(p.name for p in (writer.run_dir / "layer_a").iterdir()) == sorted(Path(f).name for f in files)
    for s in shards:
        assert s.n_tokens == size
        assert s.sha256 == hashlib.sha256((writer.run_dir / s.file).read_bytes()).hexdigest()
    run = store.open_run("org/model", "run-1")
    ids = row_ids(torch.cat(list(run.iter_batches("layer_a", 7))))
    assert sorted(ids) == list(range(n_threads * per_thread * size))
    assert leftover_temp_files(store.root) == []


def test_layer_lookup_errors(store: LocalStore) -> None:
    make_run(store, [1])
    run = store.open_run("org/model", "run-1")
    with pytest.raises(KeyError, match="has no layer 'nope'"):
        run.layer("nope")


# ---------------------------------------------------------------------- iter_batches


@pytest.fixture(scope="module")
def run50(tmp_path_factory: pytest.TempPathFactory) -> ActivationRun:
    # 50 rows in uneven shards: batches straddle shard boundaries. Module-scoped because the tests only
    # read it and every shard write fsyncs.
    store = LocalStore(tmp_path_factory.mktemp("run50"))
    make_run(store, [7, 5, 9, 3, 6, 8, 4, 8])
    return store.open_run("org/model", "run-1")


def test_iter_batches_in_order_every_row_once(run50: ActivationRun) -> None:
    batches = list(run50.iter_batches("layer_a", 8))
    assert sizes(batches) == [8] * 6 + [2]
    assert all(b.shape[1:] == (D,) for b in batches)
    assert row_ids(torch.cat(batches)) == list(range(50))
    assert torch.equal(torch.cat(batches), rows(0, 50))


def test_iter_batches_drop_last(run50: ActivationRun) -> None:
    batches = list(run50.iter_batches("layer_a", 8, drop_last=True))
    assert sizes(batches) == [8] * 6
    assert row_ids(torch.cat(batches)) == list(range(48))
    shuffled = list(run50.iter_batches("layer_a", 8, shuffle=True, drop_last=True))
    assert sizes(shuffled) == [8] * 6
    assert len(set(row_ids(torch.cat(shuffled)))) == 48


def test_iter_batches_exact_multiple_has_no_empty_tail(run50: ActivationRun) -> None:
    batches = list(run50.iter_batches("layer_a", 10))
    assert sizes(batches) == [10] * 5


@pytest.mark.parametrize("buffer_shards", [0, 1, 3, 100])
def test_iter_batches_shuffle_every_row_once(run50: ActivationRun, buffer_shards: int) -> None:
    batches = list(run50.iter_batches("layer_a", 8, shuffle=True, seed=3, buffer_shards=buffer_shards))
    ids = row_ids(torch.cat(batches))
    assert sorted(ids) == list(range(50))
    assert ids != list(range(50))
    assert sizes(batches) == [8] * 6 + [2]
    for b in batches:  # rows stay whole: every value of a row is its id
        assert torch.equal(b, b[:, :1].expand_as(b))


def test_iter_batches_shuffle_deterministic_per_seed(run50: ActivationRun) -> None:
    def order(seed: int) -> list[int]:
        return row_ids(torch.cat(list(run50.iter_batches("layer_a", 8, shuffle=True, seed=seed))))

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert order(2) != order(3)


def test_iter_batches_dtype(run50: ActivationRun) -> None:
    batch = next(run50.iter_batches("layer_a", 4, dtype=torch.float16))
    assert batch.dtype == torch.float16
    assert row_ids(batch) == [0, 1, 2, 3]


@pytest.mark.parametrize("bad", [0, -1])
def test_iter_batches_rejects_non_positive_batch(run50: ActivationRun, bad: int) -> None:
    with pytest.raises(ValueError, match="batch_size must be positive"):
        next(run50.iter_batches("layer_a", bad))


def test_iter_batches_empty_layer(store: LocalStore) -> None:
    make_run(store, [])
    assert list(store.open_run("org/model", "run-1").iter_batches("layer_a", 4, shuffle=True)) == []


@pytest.mark.parametrize(
    ("shard_sizes", "batch_size", "shuffle", "buffer_shards"),
    [([7, 5, 9, 3], 8, False, 4), ([3] * 7, 10, True, 2), ([2, 2], 4, False, 4)],
)
def test_iter_batches_never_yields_an_empty_batch(
    store: LocalStore, shard_sizes: list[int], batch_size: int, shuffle: bool, buffer_shards: int
) -> None:
    make_run(store, shard_sizes)
    run = store.open_run("org/model", "run-1")
    # A window smaller than one batch must carry its rows over, not yield a (0, d_model) batch.
    batches = list(run.iter_batches("layer_a", batch_size, shuffle=shuffle, buffer_shards=buffer_shards))
    assert all(b.shape[0] > 0 for b in batches)
    assert sorted(row_ids(torch.cat(batches))) == list(range(sum(shard_sizes)))


@pytest.mark.parametrize(("shuffle", "buffer_shards"), [(True, 3), (True, 1), (False, 4)])
def test_iter_batches_reads_at_most_buffer_shards_at_a_time(
    store: LocalStore, shuffle: bool, buffer_shards: int
) -> None:
    make_run(store, [5] * 10)
    run = CountingRun(store.run_dir("org/model", "run-1"))
    window = buffer_shards if shuffle else 1  # unshuffled reads stream one shard at a time
    gen: Iterator[torch.Tensor] = run.iter_batches("layer_a", 2, shuffle=shuffle, seed=0, buffer_shards=buffer_shards)
    reads_at_yield: list[int] = []
    seen: list[int] = []
    for batch in gen:
        reads_at_yield.append(len(run.reads))
        seen.extend(row_ids(batch))
    assert reads_at_yield[0] == window
    steps = [b - a for a, b in zip([0, *reads_at_yield], reads_at_yield, strict=False)]
    assert max(steps) <= window
    assert sorted(run.reads) == list(range(10))  # every shard read exactly once
    assert sorted(seen) == list(range(50))


def test_iter_batches_carry_across_windows_smaller_than_batch(store: LocalStore) -> None:
    # Each window holds fewer rows than one batch: rows must carry over, never be lost.
    make_run(store, [3] * 7)
    run = store.open_run("org/model", "run-1")
    for shuffle in (False, True):
        batches = list(run.iter_batches("layer_a", 10, shuffle=shuffle, buffer_shards=2))
        assert sizes(batches) == [10, 10, 1]
        assert sorted(row_ids(torch.cat(batches))) == list(range(21))


# ---------------------------------------------------------------------- corruption


def shard_path(store: LocalStore, index: int = 0) -> Path:
    return store.run_dir("org/model", "run-1") / "layer_a" / f"{index:05d}.safetensors"


def test_flipped_byte_is_detected(store: LocalStore) -> None:
    make_run(store, [4, 4])
    path = shard_path(store, 1)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the tensor data: safetensors itself would read it without complaint
    path.write_bytes(bytes(data))
    run = store.open_run("org/model", "run-1")
    assert torch.equal(run.read_shard("layer_a", 0)[ACTIVATIONS], rows(0, 4))
    with pytest.raises(CorruptShardError) as err:
        list(run.iter_batches("layer_a", 2))
    msg = str(err.value)
    assert str(path) in msg
    assert "sha256" in msg and "does not match" in msg and "corrupt" in msg


def test_truncated_shard_is_detected(store: LocalStore) -> None:
    make_run(store, [4])
    path = shard_path(store)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptShardError) as err:
        store.open_run("org/model", "run-1").read_shard("layer_a", 0)
    msg = str(err.value)
    assert str(path) in msg and "does not match" in msg and "truncated" in msg
    assert f"({len(data) // 2} bytes on disk)" in msg


def test_missing_shard_file(store: LocalStore) -> None:
    make_run(store, [4])
    path = shard_path(store)
    path.unlink()
    with pytest.raises(CorruptShardError, match="missing") as err:
        next(store.open_run("org/model", "run-1").iter_batches("layer_a", 2))
    assert str(path) in str(err.value)


def test_corrupt_error_is_runtime_error() -> None:
    assert issubclass(CorruptShardError, RuntimeError) and issubclass(IncompleteRunError, RuntimeError)


# ---------------------------------------------------------------------- LocalStore: paths


def test_store_root_is_resolved_and_created(tmp_path: Path) -> None:
    s = LocalStore(tmp_path / "x" / ".." / "new")
    assert s.root == (tmp_path / "new").resolve() and s.root.is_dir()
    assert repr(s) == f"LocalStore({str(s.root)!r})"


def test_default_store_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "envstore"))
    assert default_store_root() == tmp_path / "envstore"
    assert LocalStore().root == (tmp_path / "envstore").resolve()
    monkeypatch.delenv(STORE_ENV)
    assert default_store_root() == Path.home() / ".cache" / "mi_crow" / "store"


def test_new_id_format_and_uniqueness() -> None:
    ids = {new_id("sae") for _ in range(50)}
    assert len(ids) == 50
    for i in ids:
        assert i.startswith("sae-") and validate_name(i) == i


def test_store_dirs_layout(store: LocalStore) -> None:
    assert store.run_dir("org/m", "r") == store.root / "activations" / "org--m" / "r"
    assert store.sae_dir("org/m", "s") == store.root / "saes" / "org--m" / "s"
    assert store.concepts_dir("org/m", "s") == store.root / "concepts" / "org--m" / "s"
    assert store.model_dir("saes", "org/m") == store.root / "saes" / "org--m"


@pytest.mark.parametrize("bad", ["..", "../x", "a/b", ".x", ""])
def test_store_dirs_reject_bad_ids(store: LocalStore, bad: str) -> None:
    with pytest.raises(InvalidNameError):
        store.run_dir("m", bad)
    with pytest.raises(InvalidNameError):
        store.sae_dir("m", bad)
    with pytest.raises(InvalidNameError):
        store.concepts_dir("m", bad)


@pytest.mark.parametrize("model_id", ["../../etc", "/etc/passwd", "..", "~/x/../../y"])
def test_hostile_model_ids_stay_inside_root(store: LocalStore, model_id: str) -> None:
    path = store.run_dir(model_id, "r")
    assert store.root in path.resolve().parents
    assert path.parent.parent == store.root / "activations"


def test_path_rejects_dotdot_parts(store: LocalStore) -> None:
    with pytest.raises(PermissionError, match="outside the store root"):
        store._path("..", "elsewhere")
    assert store._path() == store.root


def test_symlink_planted_inside_store_is_refused(store: LocalStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "activations").mkdir()
    os.symlink(outside, store.root / "activations" / "org--model")
    with pytest.raises(PermissionError, match="outside the store root"):
        store.run_dir("org/model", "run-1")
    with pytest.raises(PermissionError):
        store.create_run("org/model", {"l": (D, "float32")}, run_id="run-1")
    with pytest.raises(PermissionError):
        store._path("activations", "org--model")
    assert list(outside.iterdir()) == []


def test_symlinked_run_dir_cannot_be_deleted_through(store: LocalStore, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    (store.root / "activations" / "org--model").mkdir(parents=True)
    os.symlink(victim, store.root / "activations" / "org--model" / "run-1")
    with pytest.raises(PermissionError):
        store.delete_run("org/model", "run-1")
    assert (victim / "keep.txt").read_text() == "precious"


def test_symlink_inside_root_pointing_inside_is_allowed(store: LocalStore) -> None:
    (store.root / "real").mkdir()
    os.symlink(store.root / "real", store.root / "activations")
    assert store.run_dir("m", "r") == store.root / "activations" / "m" / "r"


def test_find_run_does_not_follow_symlink_out_of_root(store: LocalStore, tmp_path: Path) -> None:
    make_run(LocalStore(tmp_path / "elsewhere"), [2], model_id="m", run_id="run-x")
    (store.root / "activations").mkdir()
    os.symlink(tmp_path / "elsewhere" / "activations" / "m", store.root / "activations" / "evil")
    with pytest.raises((PermissionError, FileNotFoundError)):
        store.find_run("run-x")


# ---------------------------------------------------------------------- LocalStore: listing and deleting


def test_list_find_and_delete_runs(store: LocalStore) -> None:
    make_run(store, [1], model_id="org/a", run_id="r1")
    make_run(store, [1], model_id="org/a", run_id="r2", finish=False)
    make_run(store, [2], model_id="org/b", run_id="r3")
    assert store.list_runs() and [m.run_id for m in store.list_runs("org/a")] == ["r1", "r2"]
    assert [m.run_id for m in store.list_runs("org/b")] == ["r3"]
    assert sorted(m.run_id for m in store.list_runs()) == ["r1", "r2", "r3"]
    assert store.list_runs("org/none") == []
    runs = store.list_runs()
    assert [m.created_at for m in runs] == sorted(m.created_at for m in runs)
    assert {m.run_id: m.status for m in runs}["r2"] == "running"

    found = store.find_run("r3")
    assert found.model_id == "org/b" and found.n_tokens == 2
    with pytest.raises(FileNotFoundError, match="no activation run 'zzz'"):
        store.find_run("zzz")
    with pytest.raises(InvalidNameError):
        store.find_run("*")

    store.delete_run("org/a", "r1")
    assert not store.run_dir("org/a", "r1").exists()
    assert sorted(m.run_id for m in store.list_runs()) == ["r2", "r3"]
    with pytest.raises(FileNotFoundError):
        store.find_run("r1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.delete_run("org/a", "r1")
    assert leftover_temp_files(store.root) == []


def test_list_runs_on_empty_store(store: LocalStore) -> None:
    assert store.list_runs() == [] and store.list_saes() == []


def write_sae(store: LocalStore, model_id: str, sae_id: str, created_at: float) -> Path:
    sae_dir = store.sae_dir(model_id, sae_id)
    atomic_write_json(sae_dir / "sae.json", {"sae_id": sae_id, "model_id": model_id, "created_at": created_at})
    (sae_dir / "sae.safetensors").write_bytes(b"weights")
    return sae_dir


def test_list_find_and_delete_saes(store: LocalStore) -> None:
    write_sae(store, "org/a", "sae-2", created_at=2.0)
    write_sae(store, "org/a", "sae-1", created_at=1.0)
    write_sae(store, "org/b", "sae-3", created_at=3.0)
    store.sae_dir("org/b", "no-meta").mkdir(parents=True)  # an unfinished SAE without sae.json is not listed
    assert [m["sae_id"] for m in store.list_saes()] == ["sae-1", "sae-2", "sae-3"]
    assert [m["sae_id"] for m in store.list_saes("org/a")] == ["sae-1", "sae-2"]
    assert store.list_saes("org/c") == []
    assert store.find_sae_dir("sae-3") == store.sae_dir("org/b", "sae-3")
    with pytest.raises(FileNotFoundError, match="no SAE 'no-meta'"):
        store.find_sae_dir("no-meta")
    with pytest.raises(InvalidNameError):
        store.find_sae_dir("../sae-3")

    concepts = store.concepts_dir("org/a", "sae-1")
    atomic_write_json(concepts / "dictionary.json", {"n_latents": 1, "concepts": {}})
    store.delete_sae("org/a", "sae-1")
    assert not store.sae_dir("org/a", "sae-1").exists()
    assert not concepts.exists()  # an SAE's concepts go with it
    with pytest.raises(FileNotFoundError):
        store.find_sae_dir("sae-1")
    store.delete_sae("org/b", "sae-3")  # no concepts directory: still fine
    assert [m["sae_id"] for m in store.list_saes()] == ["sae-2"]
    with pytest.raises(FileNotFoundError, match="SAE 'sae-3' does not exist"):
        store.delete_sae("org/b", "sae-3")
    assert leftover_temp_files(store.root) == []


def test_list_saes_without_created_at_sorts_first(store: LocalStore) -> None:
    write_sae(store, "m", "b", created_at=5.0)
    sae_dir = store.sae_dir("m", "a")
    atomic_write_json(sae_dir / "sae.json", {"sae_id": "a"})
    assert [m["sae_id"] for m in store.list_saes()] == ["a", "b"]


def test_shard_bytes_are_plain_safetensors(store: LocalStore) -> None:
    # Other tools (and workers in other languages) read shards directly: the format must be standard.
    make_run(store, [3])
    out = st_load(shard_path(store).read_bytes())
    assert set(out) == {ACTIVATIONS, TOKEN_IDS, POSITIONS, SAMPLE_INDEX}


def test_non_finite_activations_are_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    writer = store.create_run("m", {"l": (3, "float32")}, run_id="nan-run")
    bad = torch.ones(2, 3)
    bad[1, 2] = float("nan")
    ids = torch.zeros(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="NaN or Inf"):
        writer.add_shard("l", bad, ids, ids, ids.long())
    assert writer.manifest.layers["l"].shards == []
