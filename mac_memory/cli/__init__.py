"""The ``mac-memory`` command line: a thin map from subcommands to plain functions.

Each subcommand's options come from a dataclass whose field docstrings are the help text, so the
CLI and the Python API never drift apart.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import logging
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any


def _field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (``x: int = 1`` followed by ``\"\"\"help\"\"\"``)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in itertools.pairwise(body):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--option`` per field of ``cls``, typed from its annotation, help from its docstring."""
    docs = _field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        hint = hints[f.name]
        base = hint
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[X] / X | None → X
            base = next(a for a in typing.get_args(hint) if a is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        name = "--" + f.name.replace("_", "-")
        help_text = f"{docs.get(f.name, '')} (default: {default!r})".replace("%", "%%")
        if base is bool:
            parser.add_argument(name, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        elif base in (int, float, str):
            parser.add_argument(name, dest=f.name, type=base, default=default, help=help_text,
                                required=default is None and f.default is dataclasses.MISSING)
        elif typing.get_origin(base) in (tuple, list):
            inner = typing.get_args(base)[0] if typing.get_args(base) else str
            parser.add_argument(name, dest=f.name, type=inner, nargs="+", default=default, help=help_text)


def dataclass_from_args(cls: type, ns: argparse.Namespace) -> Any:
    kwargs = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)}
    for f in dataclasses.fields(cls):
        if isinstance(kwargs.get(f.name), list):
            kwargs[f.name] = tuple(kwargs[f.name])
    return cls(**kwargs)


def _commands() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[Any], int]]]:
    """name → (help, add-arguments, run). Imports stay inside the functions: ``--help`` is instant."""
    from . import demo

    commands = {
        "demo": ("Run the end-to-end demo on the embedded default.", demo.add_arguments, demo.run),
    }
    from .bench import COMMANDS as bench_commands
    from .memory import COMMANDS as memory_commands
    from .training import COMMANDS as training_commands

    commands.update(training_commands)
    commands.update(memory_commands)
    commands.update(bench_commands)
    return commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mac-memory", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = _commands()
    for name, (help_text, add_args, _) in commands.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from ..errors import MACError

    try:
        return int(commands[ns.command][2](ns) or 0)
    except MACError as exc:
        print(f"mac-memory {ns.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
