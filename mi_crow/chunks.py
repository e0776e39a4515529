"""Tensors on the wire: rows of a tensor as TensorChunk messages (raw little-endian bytes + XXH3 checksum)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
import xxhash

from mi_crow.v1 import common_pb2

_DTYPES = {
    torch.float32: common_pb2.FLOAT32,
    torch.float16: common_pb2.FLOAT16,
    torch.bfloat16: common_pb2.BFLOAT16,
    torch.int32: common_pb2.INT32,
    torch.int64: common_pb2.INT64,
}
_TORCH = {v: k for k, v in _DTYPES.items()}

CHUNK_BYTES = 1 << 20  # ~1 MiB per message: HTTP/2 flow control keeps a few in flight (see FACTS)


def tensor_to_chunk(
    tensor: torch.Tensor,
    *,
    layer: str = "",
    sequence: int = 0,
    token_ids: Sequence[int] = (),
    positions: Sequence[int] = (),
    sample_index: Sequence[int] = (),
    last: bool = False,
) -> common_pb2.TensorChunk:
    tensor = tensor.detach().contiguous().cpu()
    if tensor.dtype not in _DTYPES:
        raise ValueError(f"cannot send tensors of dtype {tensor.dtype}")
    # bfloat16 has no numpy dtype: reinterpret the same bytes as int16 to get at them.
    raw = (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy().tobytes()
    return common_pb2.TensorChunk(
        layer=layer,
        dtype=_DTYPES[tensor.dtype],
        shape=list(tensor.shape),
        little_endian=True,
        sequence=sequence,
        data=raw,
        token_ids=list(token_ids),
        positions=list(positions),
        sample_index=list(sample_index),
        xxh3_64=xxhash.xxh3_64_hexdigest(raw),
        last=last,
    )


def chunk_to_tensor(chunk: common_pb2.TensorChunk, *, verify: bool = True) -> torch.Tensor:
    """Zero-copy view over the received bytes (checked against the chunk's checksum)."""
    if chunk.dtype not in _TORCH:
        raise ValueError(f"unknown dtype {chunk.dtype} in tensor chunk {chunk.sequence}")
    if not chunk.little_endian:
        raise ValueError("big-endian tensor chunks are not supported")
    data = chunk.data  # each read of a bytes field copies it out of the message: read it once
    if verify and chunk.xxh3_64 and xxhash.xxh3_64_hexdigest(data) != chunk.xxh3_64:
        raise ValueError(f"tensor chunk {chunk.sequence} of layer {chunk.layer!r} failed its checksum")
    dtype = _TORCH[chunk.dtype]
    if not data:
        return torch.empty(tuple(chunk.shape), dtype=dtype)
    with warnings.catch_warnings():
        # The bytes are immutable and the view is only read; torch warns about non-writable buffers anyway.
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(bytearray(data) if dtype == torch.bfloat16 else data, dtype=dtype)
    return flat.reshape(tuple(chunk.shape))


def rows_per_chunk(d_model: int, element_size: int) -> int:
    return max(1, CHUNK_BYTES // max(1, d_model * element_size))


def iter_chunks(
    tensor: torch.Tensor, *, layer: str, start_sequence: int, rows: int, **cols: torch.Tensor
) -> Iterator[common_pb2.TensorChunk]:
    """Split (n, d) rows plus per-row columns into chunks of ``rows`` rows."""
    seq = start_sequence
    for lo in range(0, tensor.shape[0], rows):
        hi = lo + rows
        extra = {k: v[lo:hi].tolist() for k, v in cols.items()}
        yield tensor_to_chunk(tensor[lo:hi], layer=layer, sequence=seq, **extra)
        seq += 1
