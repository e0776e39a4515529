"""Generation options from a request, and generation that streams tokens and stops when the caller leaves."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from mi_crow.language_model import LanguageModel
from mi_crow.services.common.errors import ServiceError
from mi_crow.services.inference.limits import MAX_NEW_TOKENS
from mi_crow.v1 import inference_pb2

_END = object()
_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    stop_strings: list[str] = field(default_factory=list)
    seed: int | None = None

    def lm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``LanguageModel.generate``."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            "stop_strings": self.stop_strings or None,
            "seed": self.seed,
        }

    def hf_kwargs(self, lm: LanguageModel) -> dict[str, Any]:
        """The same options for ``model.generate``, built exactly as ``LanguageModel.generate`` builds them,
        so a streamed and a non-streamed greedy generation give the same tokens."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "pad_token_id": lm.tokenizer.pad_token_id,
        }
        if self.do_sample:
            kwargs["temperature"] = self.temperature
            if self.top_k is not None:
                kwargs["top_k"] = self.top_k
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.stop_strings:
            kwargs["stop_strings"] = list(self.stop_strings)
            kwargs["tokenizer"] = lm.tokenizer
        return kwargs


def sampling(opts: inference_pb2.GenerationOptions) -> Sampling:
    """Validate options; proto zeros mean "unset" (seed 0: unseeded)."""
    if opts.max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must not be negative, got {opts.max_new_tokens}")
    if opts.max_new_tokens > MAX_NEW_TOKENS:
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"max_new_tokens {opts.max_new_tokens} is over the limit of {MAX_NEW_TOKENS}",
        )
    for name in ("temperature", "top_p", "repetition_penalty"):
        value = getattr(opts, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite non-negative number, got {value}")
    if opts.top_p > 1:
        raise ValueError(f"top_p must lie in (0, 1], got {opts.top_p}")
    if opts.top_k < 0:
        raise ValueError(f"top_k must not be negative, got {opts.top_k}")
    return Sampling(
        max_new_tokens=opts.max_new_tokens,
        do_sample=opts.do_sample,
        temperature=opts.temperature or 1.0,
        top_k=opts.top_k or None,
        top_p=opts.top_p or None,
        repetition_penalty=opts.repetition_penalty or None,
        stop_strings=[s for s in opts.stop if s],
        seed=opts.seed or None,
    )


def prompt_ids(lm: LanguageModel, prompt: str, max_new_tokens: int = 0) -> list[int]:
    """Token ids of a prompt, refusing prompts that are empty or leave no room for the new tokens."""
    if not prompt:
        raise ValueError("the prompt is empty")
    ids = lm.tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if not ids:
        raise ValueError(f"the prompt {prompt[:40]!r} tokenizes to nothing")
    if len(ids) + max_new_tokens > lm.max_length:
        raise ValueError(
            f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context length "
            f"{lm.max_length} of model {lm.model_id!r}"
        )
    return ids


class TextDelta:
    """Decodes a growing token sequence into text increments whose concatenation is the full decode."""

    def __init__(self, lm: LanguageModel) -> None:
        self._tokenizer = lm.tokenizer
        self._ids: list[int] = []
        self._sent = ""

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""  # the token ends inside a multi-byte character: wait for the rest of its bytes
        return self._take(text)

    def flush(self) -> str:
        return self._take(self._tokenizer.decode(self._ids, skip_special_tokens=True))

    def _take(self, text: str) -> str:
        delta = text[len(self._sent) :]
        self._sent = text
        return delta


class _QueueStreamer(BaseStreamer):
    def __init__(self) -> None:
        self.queue: queue.Queue[object] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first pushes the prompt itself
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.queue.put(int(token))

    def end(self) -> None:
        self.queue.put(_END)


class _StopWhenSet(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_tokens(lm: LanguageModel, prompt: str, options: Sampling, is_active: Callable[[], bool]) -> Iterator[int]:
    """Generated token ids as the model produces them, up to the first EOS/pad (as ``lm.generate`` cuts).

    The model runs in a helper thread; leaving the iterator (done, caller gone, or closed) stops it at the
    next decoding step and waits for it, so no generation outlives its request.
    """
    enc = lm.tokenize([prompt], padding_side="left")
    streamer = _QueueStreamer()
    cancel = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with torch.inference_mode():
                lm.model.generate(
                    **enc,
                    **options.hf_kwargs(lm),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_StopWhenSet(cancel)]),
                )
        except BaseException as exc:
            failures.append(exc)
            streamer.queue.put(_END)

    if options.seed is not None:
        torch.manual_seed(options.seed)
    stops = {lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id} - {None}
    worker = threading.Thread(target=run, name="generate-stream", daemon=True)
    worker.start()
    try:
        while True:
            try:
                item = streamer.queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if not is_active():
                    return
                continue
            if item is _END or item in stops:
                break
            yield int(item)  # type: ignore[call-overload]
        if failures:
            raise failures[0]
    finally:
        cancel.set()
        worker.join()
