"""LangChain's ``stop`` sequences applied to a streamed answer, piece by piece.

The core streams answers (``MACMemory.chat_stream`` / :func:`mac_memory.memory.memory.stream_answer`),
whose joined pieces equal the cleaned answer; :func:`stop_pieces` cuts that stream the way
:func:`cut_at_stop` cuts the whole text, releasing text as soon as it cannot begin a stop sequence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """``text`` up to the earliest occurrence of any (non-empty) stop sequence."""
    hits = [i for i in (text.find(s) for s in stop or () if s) if i != -1]
    return text[: min(hits)] if hits else text


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


def stop_pieces(pieces: Iterable[str], stop: Sequence[str] | None) -> Iterator[str]:
    """``pieces`` cut at the earliest stop sequence: joined, ``cut_at_stop("".join(pieces), stop)``.

    Once a stop sequence completes, ``pieces`` is closed (for a generation stream: generation stops).
    """
    cut, source = StopCut(stop), iter(pieces)
    try:
        for piece in source:
            out = cut.feed(piece)
            if out:
                yield out
            if cut.done:
                break
        tail = cut.flush()
        if tail:
            yield tail
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
