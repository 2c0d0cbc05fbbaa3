"""The library's error hierarchy.

Every error mac-memory raises on purpose derives from :class:`MACError`. Where a builtin exception
already describes the kind of problem, the specific class inherits it too, so ``except ValueError``
in user code keeps working.
"""

from __future__ import annotations


class MACError(Exception):
    """Base class of every error mac-memory raises on purpose."""


class ConfigError(MACError, ValueError):
    """A configuration field holds a value that cannot work; the message names the field."""


class DataFormatError(MACError, ValueError):
    """An input file or record does not follow the document-stream format (message names line and field)."""


class EmptyInputError(MACError, ValueError):
    """A document or question is empty or whitespace only."""


class CheckpointError(MACError, OSError):
    """A checkpoint directory is missing files, is corrupt, or was not written by mac-memory."""


class BaseModelMismatchError(MACError, ValueError):
    """A checkpoint or stored modulation belongs to a different base LM or checkpoint than the one in use."""


class BaseModelLoadError(MACError, OSError):
    """A base LM's files cannot be loaded (missing, truncated or foreign file, unsupported architecture);
    the message names the file and the fix."""


class MissingDependencyError(MACError, ImportError):
    """An optional dependency is not installed; the message gives the exact ``pip install`` command."""


def require(module: str, extra: str) -> None:
    """Raise :class:`MissingDependencyError` naming the extra to install when ``module`` is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"This feature needs the optional dependency {module!r}. "
            f"Install it with: pip install 'mac-memory[{extra}]'"
        )


class InvalidInputError(MACError, ValueError):
    """An argument has a value that cannot work (bad namespace, k, chat messages, ...); the message says which."""


class InputTypeError(MACError, TypeError):
    """An argument has the wrong type (e.g. a document that is not a str); the message names its position."""


class InvalidMetadataError(InvalidInputError):
    """Metadata a store cannot hold: nested dicts, bytes, empty lists, reserved ``mac_`` keys, wrong count."""


class DuplicateIdError(InvalidInputError):
    """The same id appears twice in one call, or an id already belongs to a different document."""


class ModulationError(MACError, ValueError):
    """A modulation cannot be encoded for storage (NaN/Inf values, wrong rank, overflow of the codec)."""


class CorruptModulationError(ModulationError):
    """Stored modulation bytes fail their header, length or checksum check: tampered or truncated, never used."""


class StoreConnectionError(MACError, ConnectionError):
    """The Chroma server cannot be reached; the message names host:port and how to start a server."""


def check_texts(texts: object, noun: str = "text", *, item: str | None = None,
                allow_empty: bool = False) -> list[str]:
    """Refuse a bare str, non-str items and empty/whitespace-only items, naming the item's position.

    ``item`` formats an item's name from its index (default ``"<noun> {}"``, e.g. ``"document 3"``).
    """
    from collections.abc import Sequence

    name = item or f"{noun} {{}}"
    if isinstance(texts, (str, bytes, bytearray)) or not isinstance(texts, Sequence):
        got = "a single str" if isinstance(texts, str) else type(texts).__name__
        raise InputTypeError(f"Expected a list of {noun}s, got {got}; wrap a single {noun} in a list.")
    texts = list(texts)
    if not texts and not allow_empty:
        raise EmptyInputError(f"Got an empty list of {noun}s.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputTypeError(f"{name.format(i)} must be a str, got {type(text).__name__}.")
        if not text.strip():
            raise EmptyInputError(f"{name.format(i)} is empty or whitespace only; give it some content.")
        check_unicode(text, name.format(i))
    return texts


def check_unicode(text: str, name: str) -> str:
    """Refuse a str that is not valid Unicode (a lone surrogate, e.g. from ``errors='surrogateescape'``).

    Such a string cannot be encoded as UTF-8, so no tokenizer, hash or store can take it; refusing it up
    front names the culprit instead of failing deep inside one of them.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{name} is not valid Unicode text: it holds the lone surrogate {text[exc.start]!r} at position "
            f"{exc.start} (bytes decoded with errors='surrogateescape'?). Decode the source with its real "
            "encoding, or with errors='replace'."
        ) from None
    return text
