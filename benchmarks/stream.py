"""Activation streaming over gRPC on loopback vs a raw TCP socket moving the same bytes, process to process.

The gRPC side is the real path: the sender encodes TensorChunks of about 1 MiB with ``encode_chunk`` (raw
bytes + XXH3, as the inference server's StreamActivations does); the receiver reads them with
``decode_chunk`` and ``chunk_to_tensor`` (checksum verified), as the client and the workers do. Both
processes tune the allocator as mi-crow's servers and clients do. Two more sides, for the notes: the same
messages already serialized (no per-message Python work on either end: what the gRPC transport alone allows
here), and the same chunks built and parsed as protobuf message objects (what a plain generated stub does).
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import statistics
import time
from concurrent import futures

import grpc
import torch

from mi_crow.allocator import tune_for_large_buffers
from mi_crow.chunk_wire import decode_chunk, encode_chunk
from mi_crow.chunks import chunk_to_tensor, iter_chunks, iter_row_slices, rows_per_chunk
from mi_crow.v1 import common_pb2

D_MODEL = 768
VERIFY = True
METHOD = "/bench.Stream/Rows"
RAW_METHOD = "/bench.Stream/Raw"
MESSAGES_METHOD = "/bench.Stream/Messages"


def _payload(total_mib: int) -> torch.Tensor:
    rows = total_mib * (1 << 20) // (D_MODEL * 4)
    return torch.randn(rows, D_MODEL)


def _tcp_sender(port_q: mp.Queue, total_mib: int, repeats: int) -> None:
    data = _payload(total_mib).numpy().tobytes()
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port_q.put(srv.getsockname()[1])
        for _ in range(repeats):
            conn, _ = srv.accept()
            with conn:
                conn.sendall(data)


def _grpc_sender(port_q: mp.Queue, total_mib: int) -> None:
    tune_for_large_buffers()
    tensor = _payload(total_mib)
    rows = rows_per_chunk(D_MODEL, 4)
    wire = [c.SerializeToString() for c in iter_chunks(tensor, layer="bench", start_sequence=0, rows=rows)]

    def stream(request: bytes, context: grpc.ServicerContext):
        for seq, (part, _) in enumerate(iter_row_slices(tensor, rows=rows)):
            yield encode_chunk(part, layer="bench", sequence=seq)

    def messages(request: bytes, context: grpc.ServicerContext):
        yield from iter_chunks(tensor, layer="bench", start_sequence=0, rows=rows)

    def raw(request: bytes, context: grpc.ServicerContext):
        yield from wire

    handler = grpc.method_handlers_generic_handler(
        "bench.Stream",
        {
            "Rows": grpc.unary_stream_rpc_method_handler(stream),
            "Raw": grpc.unary_stream_rpc_method_handler(raw),
            "Messages": grpc.unary_stream_rpc_method_handler(
                messages, response_serializer=common_pb2.TensorChunk.SerializeToString
            ),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_q.put(port)
    server.wait_for_termination()


def _tcp_receive(port: int, nbytes: int) -> float:
    buf = bytearray(nbytes)
    view = memoryview(buf)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        got = 0
        while got < nbytes:
            n = conn.recv_into(view[got:])
            if n == 0:
                break
            got += n
    elapsed = time.perf_counter() - start
    assert got == nbytes, (got, nbytes)
    return nbytes / elapsed


def _grpc_receive(channel: grpc.Channel, nbytes: int, method: str = METHOD) -> float:
    parse = decode_chunk if method == METHOD else common_pb2.TensorChunk.FromString
    call = channel.unary_stream(method, request_serializer=lambda b: b, response_deserializer=parse)
    start = time.perf_counter()
    got = 0
    for chunk in call(b""):
        got += chunk_to_tensor(chunk, verify=VERIFY).numel() * 4
    elapsed = time.perf_counter() - start
    assert got == nbytes, (got, nbytes)
    return nbytes / elapsed


def _grpc_raw_receive(channel: grpc.Channel, nbytes: int) -> float:
    call = channel.unary_stream(RAW_METHOD)
    start = time.perf_counter()
    got = sum(len(message) for message in call(b""))
    elapsed = time.perf_counter() - start
    assert got >= nbytes, (got, nbytes)  # the messages' headers come on top of the payload
    return nbytes / elapsed


def bench_stream(total_mib: int, repeats: int) -> tuple[float, float, str]:
    """Median bytes/s of (gRPC, raw TCP) for ``total_mib`` MiB, alternating the two."""
    tune_for_large_buffers()
    ctx = mp.get_context("spawn")
    nbytes = _payload(total_mib).numel() * 4
    tcp_q: mp.Queue = ctx.Queue()
    grpc_q: mp.Queue = ctx.Queue()
    tcp_proc = ctx.Process(target=_tcp_sender, args=(tcp_q, total_mib, repeats + 1), daemon=True)
    grpc_proc = ctx.Process(target=_grpc_sender, args=(grpc_q, total_mib), daemon=True)
    tcp_proc.start()
    grpc_proc.start()
    tcp_port, grpc_port = tcp_q.get(timeout=120), grpc_q.get(timeout=120)
    opts = [("grpc.max_receive_message_length", 16 << 20)]
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=opts) as channel:
        _grpc_receive(channel, nbytes)  # warm-up
        _grpc_raw_receive(channel, nbytes)
        _tcp_receive(tcp_port, nbytes)
        _grpc_receive(channel, nbytes, MESSAGES_METHOD)
        g, t, r, m = [], [], [], []
        sides = [
            (g, lambda: _grpc_receive(channel, nbytes)),
            (r, lambda: _grpc_raw_receive(channel, nbytes)),
            (m, lambda: _grpc_receive(channel, nbytes, MESSAGES_METHOD)),
            (t, lambda: _tcp_receive(tcp_port, nbytes)),
        ]
        for i in range(repeats):
            for rates, measure in sides if i % 2 == 0 else sides[::-1]:
                rates.append(measure())
    grpc_proc.terminate()
    tcp_proc.join(5)
    ceiling, tcp = statistics.median(r), statistics.median(t)
    note = (
        f"{total_mib} MiB of float32 rows (d={D_MODEL}) in ~1 MiB TensorChunks with XXH3 checksums, "
        f"sender/receiver processes; gRPC transport alone (pre-serialized messages): {ceiling / 1e6:,.0f} MB/s "
        f"= {ceiling / tcp:.2f} x raw TCP, ours = {statistics.median(g) / ceiling:.2f} x it; "
        f"as protobuf message objects: {statistics.median(m) / 1e6:,.0f} MB/s = {statistics.median(m) / tcp:.2f} x TCP"
    )
    return statistics.median(g), statistics.median(t), note


if __name__ == "__main__":
    g, t, note = bench_stream(256, 5)
    print(f"grpc {g / 1e9:.2f} GB/s  tcp {t / 1e9:.2f} GB/s  ratio {g / t:.2f}  ({note})")
