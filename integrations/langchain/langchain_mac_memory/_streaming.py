"""Streaming an answer of the frozen LM under a MAC prefix, piece by piece, with LangChain's ``stop``.

The core streams question-only answers (``MACMemory.answer_stream``); a chat model also needs the chat
history in the prompt, so this module streams any prompt through the public :class:`FrozenLM` pieces
(``tokenize`` + ``generate_ids`` with a ``TextIteratorStreamer``). Two incremental filters then make
the joined pieces equal what the non-streamed path returns: :class:`FirstLine` reproduces
:func:`mac_memory.prompts.clean_answer` (the answer is the first line, stripped) and :class:`StopCut`
reproduces :func:`cut_at_stop` (the text before the earliest stop sequence).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from mac_memory.frozen_lm import FrozenLM
from mac_memory.prefix import PrefixKV


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """``text`` up to the earliest occurrence of any (non-empty) stop sequence."""
    hits = [i for i in (text.find(s) for s in stop or () if s) if i != -1]
    return text[: min(hits)] if hits else text


class FirstLine:
    """Incremental ``clean_answer``: skip leading whitespace, end at the first line break.

    Trailing whitespace is held back until non-blank text follows it, so whitespace at the very end
    of the line is never emitted (``clean_answer`` strips it).
    """

    def __init__(self) -> None:
        self.started = False
        self.done = False
        self._held = ""

    def feed(self, piece: str) -> str:
        """The part of ``piece`` that belongs to the answer for sure (may be empty)."""
        if self.done:
            return ""
        if not self.started:
            piece = piece.lstrip()
            if not piece:
                return ""
            self.started = True
        newline = piece.find("\n")
        if newline != -1:
            piece, self.done = piece[:newline], True
        body = piece.rstrip()
        if not body:
            self._held += piece
            return ""
        out = self._held + body
        self._held = piece[len(body) :]
        return out


class StopCut:
    """Incremental :func:`cut_at_stop`: text that cannot be the start of a stop sequence is released."""

    def __init__(self, stop: Sequence[str] | None) -> None:
        self.stops = [s for s in stop or () if s]
        self.done = False
        self._buffer = ""

    def feed(self, piece: str) -> str:
        """The part of the text so far that is certainly before any stop sequence."""
        if self.done:
            return ""
        if not self.stops:
            return piece
        self._buffer += piece
        buf = self._buffer
        complete = min((i for i in (buf.find(s) for s in self.stops) if i != -1), default=None)
        # A stop sequence that has started but is not complete yet may still begin before `complete`.
        partial = next(
            (
                j
                for j in range(len(buf))
                if any(s.startswith(buf[j:]) and len(s) > len(buf) - j for s in self.stops)
            ),
            None,
        )
        if complete is not None and (partial is None or complete <= partial):
            self.done, self._buffer = True, ""
            return buf[:complete]
        release = len(buf) if partial is None else partial
        self._buffer = buf[release:]
        return buf[:release]

    def flush(self) -> str:
        """What is still held once the text has ended (a stop sequence never completed)."""
        out, self._buffer = ("" if self.done else self._buffer), ""
        return out


def stream_text(lm: FrozenLM, prompt: str, prefix: PrefixKV | None, max_new_tokens: int) -> Iterator[str]:
    """Raw decoded pieces of the greedy continuation of ``prompt`` under ``prefix``.

    Generation runs in a background thread; closing the iterator early (``break``, garbage collection)
    stops it at the next token, and an error in generation is raised here.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    halt = threading.Event()

    class _Halt(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), halt.is_set(), dtype=torch.bool, device=input_ids.device)

    input_ids, attention_mask = lm.tokenize([prompt])
    streamer = TextIteratorStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True)
    errors: list[BaseException] = []

    def generate() -> None:
        try:
            lm.generate_ids(
                input_ids,
                attention_mask,
                prefix,
                max_new_tokens=max_new_tokens,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_Halt()]),
            )
        except BaseException as exc:  # re-raised in the consumer; end() unblocks its loop
            errors.append(exc)
            streamer.end()

    worker = threading.Thread(target=generate, name="langchain-mac-memory-stream", daemon=True)
    worker.start()
    try:
        yield from streamer
    finally:
        halt.set()
        worker.join()
    if errors:
        raise errors[0]


def stream_answer(
    lm: FrozenLM,
    prompt: str,
    prefix: PrefixKV | None,
    max_new_tokens: int,
    stop: Sequence[str] | None = None,
) -> Iterator[str]:
    """Answer pieces whose concatenation is ``cut_at_stop(clean_answer(generation), stop)``."""
    line, cut = FirstLine(), StopCut(stop)
    raw = stream_text(lm, prompt, prefix, max_new_tokens)
    try:
        for piece in raw:
            out = cut.feed(line.feed(piece))
            if out:
                yield out
            if line.done or cut.done:
                break
        tail = cut.flush()
        if tail:
            yield tail
    finally:
        raw.close()  # stops generation when the answer ended before max_new_tokens
