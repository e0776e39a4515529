"""Tensor chunks: exact round trips for every dtype, corruption detected, rows split as asked."""

from __future__ import annotations

import pytest
import torch

from mi_crow.chunks import chunk_to_tensor, iter_chunks, rows_per_chunk, tensor_to_chunk


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int64])
def test_round_trip_is_exact(dtype: torch.dtype):
    t = (torch.randn(7, 5) * 100).to(dtype)
    chunk = tensor_to_chunk(t, layer="l", sequence=3, token_ids=range(7), last=True)
    back = chunk_to_tensor(chunk)
    assert back.dtype == dtype and torch.equal(back, t)
    assert chunk.little_endian and chunk.sequence == 3 and list(chunk.token_ids) == list(range(7)) and chunk.last


def test_corruption_and_bad_chunks_are_refused():
    chunk = tensor_to_chunk(torch.ones(2, 3))
    chunk.data = chunk.data[:-1] + b"\x00"
    with pytest.raises(ValueError, match="checksum"):
        chunk_to_tensor(chunk)
    chunk.little_endian = False
    with pytest.raises(ValueError, match="big-endian"):
        chunk_to_tensor(chunk, verify=False)
    with pytest.raises(ValueError, match="dtype"):
        tensor_to_chunk(torch.ones(2, dtype=torch.bool))
    empty = tensor_to_chunk(torch.ones(0, 4))
    assert chunk_to_tensor(empty).shape == (0, 4)


def test_iter_chunks_splits_rows_and_columns():
    t = torch.arange(50, dtype=torch.float32).reshape(10, 5)
    ids = torch.arange(10)
    chunks = list(iter_chunks(t, layer="x", start_sequence=4, rows=4, token_ids=ids))
    assert [c.sequence for c in chunks] == [4, 5, 6]
    assert torch.equal(torch.cat([chunk_to_tensor(c) for c in chunks]), t)
    assert [i for c in chunks for i in c.token_ids] == list(range(10))
    assert rows_per_chunk(1024, 4) == 256 and rows_per_chunk(10**9, 4) == 1
