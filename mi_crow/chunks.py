"""Tensors on the wire: rows of a tensor as TensorChunk messages (raw little-endian bytes + XXH3 checksum)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
import xxhash

from mi_crow.chunk_wire import DTYPES, ReceivedChunk, encode_chunk
from mi_crow.v1 import common_pb2

_TORCH = {v: k for k, v in DTYPES.items()}

CHUNK_BYTES = 1 << 20  # ~1 MiB per message: HTTP/2 flow control keeps a few in flight (see FACTS)


def tensor_to_chunk(tensor: torch.Tensor, **fields: Any) -> common_pb2.TensorChunk:
    """``tensor`` as a TensorChunk message, to embed in another message (streams send ``encode_chunk``'s bytes).

    ``fields``: layer, sequence, token_ids, positions, sample_index, last, as ``encode_chunk`` takes them.
    """
    return common_pb2.TensorChunk.FromString(encode_chunk(tensor, **fields))


def chunk_to_tensor(chunk: common_pb2.TensorChunk | ReceivedChunk, *, verify: bool = True) -> torch.Tensor:
    """Zero-copy view over the received bytes (checked against the chunk's checksum).

    A ReceivedChunk (``chunk_wire.decode_chunk``) costs no copy at all; a parsed TensorChunk costs one.
    """
    if chunk.dtype not in _TORCH:
        raise ValueError(f"unknown dtype {chunk.dtype} in tensor chunk {chunk.sequence}")
    if not chunk.little_endian:
        raise ValueError("big-endian tensor chunks are not supported")
    data = chunk.data  # each read of a message's bytes field copies it: read it once
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


def iter_row_slices(
    tensor: torch.Tensor, *, rows: int, **cols: torch.Tensor
) -> Iterator[tuple[torch.Tensor, dict[str, list[int]]]]:
    """Split (n, d) rows plus per-row columns into slices of ``rows`` rows (columns as lists)."""
    for lo in range(0, tensor.shape[0], rows):
        hi = lo + rows
        yield tensor[lo:hi], {k: v[lo:hi].tolist() for k, v in cols.items()}


def iter_chunks(
    tensor: torch.Tensor, *, layer: str, start_sequence: int, rows: int, **cols: torch.Tensor
) -> Iterator[common_pb2.TensorChunk]:
    """Split (n, d) rows plus per-row columns into chunks of ``rows`` rows."""
    for seq, (part, extra) in enumerate(iter_row_slices(tensor, rows=rows, **cols), start_sequence):
        yield tensor_to_chunk(part, layer=layer, sequence=seq, **extra)
