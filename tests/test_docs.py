"""The documentation site builds strictly, lists every page, and only mentions commands and options that exist.

``mkdocs build --strict`` fails on a broken link, a missing nav target or an unreadable page. The CLI
check reads every ``mac-memory <command> ...`` (and ``-m mac_memory <command> ...``) line of the docs'
code (fenced blocks and inline code), and asks ``mac-memory <command> --help`` whether the command and
each ``--option`` on that line exist, so the guides cannot drift from the CLI.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Every page written in Markdown, and the README (its command table is documentation too).
DOC_FILES = [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`([^`\n]+)`")
_COMMAND = re.compile(
    r"(?:^|[\s$(`])(?:mac-memory|-m\s+mac_memory)\s+([a-z][a-z0-9-]*)((?:[ \t]+[^\s|#`]+)*)"
)
_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _code_lines(text: str) -> list[str]:
    """Lines of fenced code blocks (with ``\\`` continuations joined) and inline code spans."""
    lines: list[str] = []
    for block in _FENCE.findall(text):
        lines += block.replace("\\\n", " ").splitlines()
    outside = _FENCE.sub("", text)
    lines += _INLINE.findall(outside)
    return lines


def mentioned_commands() -> dict[str, dict[str, set[str]]]:
    """``{command: {option: {files}}}`` for every ``mac-memory <command>`` in the docs' code."""
    found: dict[str, dict[str, set[str]]] = {}
    for path in DOC_FILES:
        for line in _code_lines(path.read_text(encoding="utf-8")):
            for match in _COMMAND.finditer(line):
                command, rest = match.group(1), match.group(2)
                options = found.setdefault(command, {})
                options.setdefault("", set()).add(str(path.relative_to(ROOT)))
                for option in _OPTION.findall(rest):
                    options.setdefault(option, set()).add(str(path.relative_to(ROOT)))
    return found


def _help(command: str) -> tuple[int, str]:
    """Exit code and output of ``mac-memory <command> --help``, through the console script's function."""
    from mac_memory.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([command, "--help"])
        except SystemExit as exc:
            code = exc.code
    return int(code or 0), out.getvalue() + err.getvalue()


def test_the_console_script_is_the_cli_main() -> None:
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("mac-memory") == "mac_memory.cli:main"


def test_every_command_and_option_in_the_docs_exists() -> None:
    mentioned = mentioned_commands()
    # The guides cover training, evaluation and the memory commands; an empty scan means the parser broke.
    assert {"train-base", "train", "eval", "ingest", "ask", "reindex", "stats", "demo"} <= set(mentioned)
    problems = []
    for command, options in sorted(mentioned.items()):
        code, out = _help(command)
        if code != 0:
            problems.append(f"`mac-memory {command}` (in {sorted(options[''])}) is not a command")
            continue
        known = set(_OPTION.findall(out))
        for option, files in sorted(options.items()):
            if option and option not in known:
                problems.append(f"`mac-memory {command} {option}` (in {sorted(files)}) is not an option")
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_wrong_command_and_option() -> None:
    text = "```bash\nmac-memory trian --steps 3\nmac-memory train --stepz 3 \\\n    --out x\n```\n"
    lines = _code_lines(text)
    commands = {m.group(1): _OPTION.findall(m.group(2)) for line in lines for m in _COMMAND.finditer(line)}
    assert commands == {"trian": ["--steps"], "train": ["--stepz", "--out"]}
    code, out = _help("train")
    assert code == 0 and "--steps" in out and "--stepz" not in out
    assert _help("trian")[0] == 2  # argparse refuses an unknown command


def test_every_page_is_in_the_nav() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(nav: list) -> list[str]:
        out = []
        for entry in nav:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            out += pages(value) if isinstance(value, list) else [value]
        return out

    listed = pages(config["nav"])
    # Every hand-written page (generated reports may sit in subfolders, e.g. benchmark tables).
    written = [p.name for p in DOCS.glob("*.md")] + ["benchmarks/README.md"]
    assert sorted(set(written) - set(listed)) == [], "pages missing from the nav of mkdocs.yml"
    assert [page for page in listed if not (DOCS / page).is_file()] == [], "nav entries without a page"
    assert config["theme"]["name"] in ("mkdocs", "readthedocs")  # built-in themes: no extra installs


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(site),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for page in (
        "index.html",
        "concepts/index.html",
        "quickstart/index.html",
        "integrations/index.html",
        "training/index.html",
        "storage/index.html",
        "results/index.html",
        "benchmarks/index.html",
        "reliability/index.html",
        "figures/data_flow.svg",
    ):
        assert (site / page).is_file(), page
    assert not (site / "figures" / "make_diagrams.py").exists()  # excluded: source, not content
    assert 'src="../figures/data_flow.svg"' in (site / "concepts" / "index.html").read_text(encoding="utf-8")
