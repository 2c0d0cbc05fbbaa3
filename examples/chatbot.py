"""A chatbot over a MAC memory: feed it files while you chat, ask it what it used, make it forget.

    python examples/chatbot.py --add notes/                       # chat (REPL) over the files in notes/
    python examples/chatbot.py --add a.txt --once "Where was Maro Tiskavel born?"   # one answer, then exit

Commands in the chat:

    /add <file or folder>   amortize text files (.txt .md .rst) into the memory; the path is the id
    /forget <id>            delete a document (and its modulation) from the memory
    /sources                the records behind the last answer, with their aggregation weights
    /list                   the documents in this namespace
    /help, /quit

Anything else is a question. The memory is searched and aggregated for it, and the frozen LM answers
with only the question and the last few turns in its prompt. ``--remember`` also stores every turn in
the memory, so later questions can be answered from what was said.

Without ``--path`` the memory lives in a temporary directory that is deleted on exit (your own memory
in the user data dir is left alone); ``--path DIR`` keeps it. ``--checkpoint`` selects trained MAC
networks (default: the embedded default, a small model trained on a synthetic world: its answers are
weak, see docs/results.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

TEXT_SUFFIXES = (".txt", ".md", ".rst")
HELP = """commands:
  /add <file or folder>   amortize text files into the memory (the path is the document id)
  /forget <id>            delete a document and its modulation
  /sources                records behind the last answer, by aggregation weight
  /list                   documents in this namespace
  /help                   this help
  /quit                   leave (also Ctrl-D)
anything else is a question"""


def text_files(target: str) -> list[Path]:
    """The text files named by ``target``: the file itself, or every text file under a folder."""
    path = Path(target).expanduser()
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"{target}: no such file or folder")


class Chatbot:
    """One conversation with a MAC memory; :meth:`handle` takes a line and returns what to print."""

    def __init__(
        self,
        memory: Any,
        *,
        namespace: str = "default",
        k: int = 4,
        max_new_tokens: int = 32,
        remember: bool = False,
    ) -> None:
        self.memory = memory
        self.namespace = namespace
        self.k = k
        self.max_new_tokens = max_new_tokens
        self.remember = remember
        self.messages: list[dict[str, str]] = []
        self.last: Any = None

    # ------------------------------------------------------------------ commands
    def add(self, target: str) -> str:
        files = text_files(target)
        texts, ids = [], []
        for path in files:
            text = path.read_text(encoding="utf-8")
            if text.strip():
                texts.append(text)
                ids.append(os.path.normpath(str(path)))
        if not texts:
            return f"nothing to add from {target} (no non-empty {'/'.join(TEXT_SUFFIXES)} files)"
        self.memory.add_texts(
            texts, metadatas=[{"source": i} for i in ids], ids=ids, namespace=self.namespace
        )
        n = self.memory.count(self.namespace)
        return (
            "\n".join(f"added {i}" for i in ids)
            + f"\n({n} record{'s' if n != 1 else ''} in namespace {self.namespace!r})"
        )

    def forget(self, doc_id: str) -> str:
        deleted = self.memory.delete(ids=[doc_id], namespace=self.namespace)
        if not deleted:
            return f"no document {doc_id!r} in namespace {self.namespace!r} (see /list)"
        return f"forgot {doc_id} ({deleted} record{'s' if deleted > 1 else ''})"

    def sources(self) -> str:
        if self.last is None:
            return "no answer yet"
        if not self.last.sources:
            return "the last answer used no memory (the namespace was empty)"
        lines = ["weight  score  id"]
        for s in self.last.sources:
            lines.append(f"{s.weight:6.3f}  {s.score:5.2f}  {s.id}  | {s.text[:60]!r}")
        return "\n".join(lines)

    def documents(self) -> str:
        # MACMemory has no listing call yet: read the ids from the record layout (mac_memory.memory.store).
        from mac_memory.memory.store import K_NAMESPACE, K_PARENT

        seen: dict[str, int] = {}
        for page in self.memory.store.iter_get(where={K_NAMESPACE: self.namespace}, include=["metadatas"]):
            for md in page["metadatas"] or []:
                parent = str((md or {}).get(K_PARENT, "?"))
                seen[parent] = seen.get(parent, 0) + 1
        if not seen:
            return f"namespace {self.namespace!r} is empty"
        return "\n".join(f"{doc} ({n} record{'s' if n > 1 else ''})" for doc, n in sorted(seen.items()))

    def ask(self, question: str) -> str:
        self.messages.append({"role": "user", "content": question})
        self.last = self.memory.chat(
            self.messages,
            k=self.k,
            namespace=self.namespace,
            max_new_tokens=self.max_new_tokens,
            remember=self.remember,
        )
        self.messages.append({"role": "assistant", "content": self.last.text or "..."})
        top = self.last.sources[0].id if self.last.sources else "no memory"
        n = len(self.last.sources)
        return f"bot: {self.last.text}\n     [{n} record{'s' if n != 1 else ''} aggregated; top: {top}]"

    def handle(self, line: str) -> str | None:
        """The reply to one input line; None means quit."""
        line = line.strip()
        if not line:
            return ""
        if not line.startswith("/"):
            return self.ask(line)
        command, _, arg = line.partition(" ")
        arg = arg.strip()
        if command in ("/quit", "/exit"):
            return None
        if command == "/help":
            return HELP
        if command == "/sources":
            return self.sources()
        if command == "/list":
            return self.documents()
        if command in ("/add", "/forget") and not arg:
            return f"usage: {command} <{'file or folder' if command == '/add' else 'id'}>"
        if command == "/add":
            return self.add(arg)
        if command == "/forget":
            return self.forget(arg)
        return f"unknown command {command} (try /help)"


def repl(bot: Chatbot, stdin: TextIO, stdout: TextIO) -> None:
    interactive = stdin.isatty()
    if interactive:
        print(
            f"namespace {bot.namespace!r}, {bot.memory.count(bot.namespace)} records. /help for commands.",
            file=stdout,
        )
    while True:
        if interactive:
            print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:  # end of input
            break
        try:
            reply = bot.handle(line)
        except Exception as exc:  # a bad file or id must not end the conversation
            reply = f"error: {exc}"
        if reply is None:
            break
        if reply:
            print(reply, file=stdout, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--path",
        default=None,
        help="Chroma directory to keep the memory in (default: a temporary directory, deleted on exit)",
    )
    parser.add_argument(
        "--checkpoint", default=None, help="MAC checkpoint directory (default: the embedded default)"
    )
    parser.add_argument("--collection", default="chatbot", help="Chroma collection (default: chatbot)")
    parser.add_argument("--namespace", default="default", help="memory namespace (default: default)")
    parser.add_argument("-k", type=int, default=4, help="records aggregated per answer (default: 4)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (default: 32)")
    parser.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="PATH",
        help="file or folder to ingest before chatting (repeatable)",
    )
    parser.add_argument("--remember", action="store_true", help="also store every turn in the memory")
    parser.add_argument("--once", metavar="QUESTION", help="answer one question, print its sources, exit")
    args = parser.parse_args(argv)

    from mac_memory import MACMemory

    with tempfile.TemporaryDirectory(prefix="mac-chatbot-") as tmp:
        memory = MACMemory(args.path or tmp, checkpoint=args.checkpoint, collection=args.collection)
        bot = Chatbot(
            memory,
            namespace=args.namespace,
            k=args.k,
            max_new_tokens=args.max_new_tokens,
            remember=args.remember,
        )
        for target in args.add:
            print(bot.add(target))
        if args.once is not None:
            print(bot.ask(args.once))
            print(bot.sources())
            return 0
        repl(bot, sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
