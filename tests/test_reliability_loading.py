"""Nothing executes what it loads, and nothing phones home.

* Static: an AST scan of the package source (``mac_memory/`` and the integration packages) finds no
  ``pickle``/``marshal``/``shelve``/``dill``/``joblib``, no ``torch.load`` without ``weights_only=True``,
  no ``torch.jit.load``, no ``numpy.load(allow_pickle=True)``, no ``yaml.load`` without a safe loader,
  no ``eval``/``exec`` and no ``trust_remote_code=True``. The scanner is tested on code that does each.
* Dynamic: loading a checkpoint, opening a memory, ingesting, answering and reindexing run with
  ``torch.load`` and every ``pickle`` entry point replaced by a tripwire; a checkpoint is nothing but
  JSON and safetensors files, and a stored modulation is the raw-array codec (magic, dtype, shape,
  payload, sha256; ``tests/test_memory_codec.py``). A pickle disguised as the weights file, with its
  checksum resealed, is refused without being executed
  (``tests/test_reliability_hostile.py::test_damaged_checkpoint_is_refused_and_the_memory_is_untouched``).
* Network: the engine demo (``mac-memory demo --engine``) and a MACMemory with the bundled MiniLM
  embedder, persistent Chroma, ingest, answer and reindex run with every non-loopback socket operation
  refused and recorded — in process with the hub's offline switches turned *off*, and (slow suite) in a
  fresh process without ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``/``ANONYMIZED_TELEMETRY`` set, inside a
  network namespace with no interfaces up when ``unshare -rn`` is available.
* Chroma telemetry: every client mac-memory creates has ``anonymized_telemetry=False``, even when the
  environment asks for telemetry.
"""

from __future__ import annotations

import ast
import contextlib
import ipaddress
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "mac_memory", *sorted((ROOT / "integrations").glob("**/*mac_memory*"))]

# ----------------------------------------------------------------------------- static scan

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
UNSAFE_CALLS = {"eval", "exec", "torch.jit.load", "pandas.read_pickle", "numpy.lib.format.read_array"}


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``torch.load`` for ``t.load`` after ``import torch as t``; None for anything not a plain name chain."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loading(source: str, filename: str = "<code>") -> list[str]:
    """Every place in ``source`` that can execute what it loads (see the module docstring)."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {"np": "numpy", "pd": "pandas"}
    findings: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if a.name.split(".")[0] in UNSAFE_MODULES:
                    findings.append(f"{filename}:{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            if node.module.split(".")[0] in UNSAFE_MODULES:
                findings.append(f"{filename}:{node.lineno}: from {node.module} import ...")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases) or ""
        where = f"{filename}:{node.lineno}: {name}(...)"
        if name in UNSAFE_CALLS:
            findings.append(where)
        elif name == "torch.load" and not _is_true(_kw(node, "weights_only")):
            findings.append(where + " without weights_only=True")
        elif (
            name == "numpy.load"
            and _kw(node, "allow_pickle") is not None
            and not (
                isinstance(_kw(node, "allow_pickle"), ast.Constant)
                and _kw(node, "allow_pickle").value is False
            )
        ):
            findings.append(where + " with allow_pickle")
        elif name == "yaml.load" and "Safe" not in ast.unparse(_kw(node, "Loader") or ast.Constant(None)):
            findings.append(where + " without a safe Loader")
        elif name in ("yaml.unsafe_load", "yaml.full_load"):
            findings.append(where)
        elif _is_true(_kw(node, "trust_remote_code")):
            findings.append(where + " with trust_remote_code=True")
    return findings


BAD_SNIPPETS = {
    "import pickle": "import pickle\npickle.loads(b'')",
    "from pickle": "from pickle import loads",
    "aliased pickle": "import _pickle as p",
    "marshal": "import marshal",
    "joblib": "import joblib",
    "torch.load default": "import torch\ntorch.load('x.pt')",
    "torch.load False": "import torch\ntorch.load('x.pt', weights_only=False)",
    "aliased torch.load": "import torch as t\nt.load('x.pt')",
    "from torch import load": "from torch import load\nload('x.pt')",
    "torch.load(**kw)": "import torch\nkw = {}\ntorch.load('x.pt', **kw)",
    "jit": "import torch\ntorch.jit.load('m.pt')",
    "numpy allow_pickle": "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
    "numpy allow_pickle var": "import numpy\nflag = True\nnumpy.load('a.npy', allow_pickle=flag)",
    "yaml.load": "import yaml\nyaml.load(open('c.yml'))",
    "yaml unsafe": "import yaml\nyaml.load(s, Loader=yaml.Loader)",
    "eval": "eval('1 + 1')",
    "exec": "exec('x = 1')",
    "remote code": "AutoModel.from_pretrained('x', trust_remote_code=True)",
    "pandas pickle": "import pandas as pd\npd.read_pickle('f')",
}
GOOD_SNIPPETS = [
    "import torch\ntorch.load('x.pt', weights_only=True)",
    "import numpy as np\nnp.load('a.npy')\nnp.load('b.npy', allow_pickle=False)",
    "import yaml\nyaml.load(s, Loader=yaml.SafeLoader)\nyaml.safe_load(s)",
    "from safetensors.torch import load_file\nload_file('m.safetensors')",
    "model.eval()\nast.literal_eval('1')",
]


@pytest.mark.parametrize("name", list(BAD_SNIPPETS))
def test_the_scanner_finds_unsafe_loading(name):
    assert unsafe_loading(BAD_SNIPPETS[name]), f"the scanner missed: {BAD_SNIPPETS[name]!r}"


@pytest.mark.parametrize("code", GOOD_SNIPPETS)
def test_the_scanner_accepts_safe_loading(code):
    assert unsafe_loading(code) == []


def test_package_source_loads_nothing_executable():
    files = [
        p
        for root in SOURCES
        for p in ([root] if root.is_file() else root.rglob("*.py"))
        if "tests" not in p.relative_to(ROOT).parts
    ]
    assert len(files) > 30, files  # the scan covers the package, not an empty glob
    findings = [
        f for p in files for f in unsafe_loading(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))
    ]
    assert findings == [], "\n".join(findings)


# ----------------------------------------------------------------------------- tripwires


@contextlib.contextmanager
def no_unpickling() -> Iterator[list[str]]:
    """Replace torch.load and every pickle entry point with a tripwire that records and refuses."""
    import torch

    calls: list[str] = []

    def tripwire(name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} was called while loading")

        return refuse

    class TrippedUnpickler(pickle.Unpickler):  # a class, so that modules may still subclass it
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            tripwire("pickle.Unpickler")()

    patched = {
        (torch, "load"): tripwire("torch.load"),
        (pickle, "load"): tripwire("pickle.load"),
        (pickle, "loads"): tripwire("pickle.loads"),
        (pickle, "Unpickler"): TrippedUnpickler,
    }
    saved = [(m, n, getattr(m, n)) for m, n in patched]
    for (module, name), replacement in patched.items():
        setattr(module, name, replacement)
    try:
        yield calls
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def _is_loopback(host: Any) -> bool:
    if isinstance(host, (bytes, bytearray)):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    if host in ("localhost", "") or host.startswith("/"):
        return True  # AF_UNIX paths are local
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def loopback_only() -> Iterator[list[str]]:
    """Refuse (and record) every socket connect, send or name lookup that is not for the loopback host."""
    attempts: list[str] = []
    real = {
        "connect": socket.socket.connect,
        "connect_ex": socket.socket.connect_ex,
        "sendto": socket.socket.sendto,
        "getaddrinfo": socket.getaddrinfo,
        "create_connection": socket.create_connection,
    }

    def check(what: str, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if not _is_loopback(host):
            attempts.append(f"{what} {address!r}")
            raise OSError(f"network access blocked by the test: {what} {address!r}")

    def connect(self: socket.socket, address: Any) -> Any:
        check("connect", address)
        return real["connect"](self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        check("connect_ex", address)
        return real["connect_ex"](self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> Any:
        check("sendto", args[-1])
        return real["sendto"](self, data, *args)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        check("getaddrinfo", host)
        return real["getaddrinfo"](host, *args, **kwargs)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        check("create_connection", address)
        return real["create_connection"](address, *args, **kwargs)

    replacements = [
        (socket.socket, "connect", connect),
        (socket.socket, "connect_ex", connect_ex),
        (socket.socket, "sendto", sendto),
        (socket, "getaddrinfo", getaddrinfo),
        (socket, "create_connection", create_connection),
    ]
    for owner, name, replacement in replacements:
        setattr(owner, name, replacement)
    try:
        yield attempts
    finally:
        for owner, name, _ in replacements:
            setattr(owner, name, real[name])


def test_the_guards_catch_what_they_guard():
    with loopback_only() as attempts, pytest.raises(OSError, match="blocked"):
        socket.create_connection(("192.0.2.1", 443), timeout=0.1)  # TEST-NET-1: never routable
    assert attempts
    with loopback_only() as attempts, pytest.raises(OSError, match="blocked"):
        socket.getaddrinfo("huggingface.co", 443)
    with loopback_only() as attempts:
        socket.getaddrinfo("127.0.0.1", 80)  # loopback is allowed
    assert attempts == []
    with no_unpickling() as calls, pytest.raises(AssertionError):
        pickle.loads(pickle.dumps(1))
    assert calls == ["pickle.loads"] and pickle.loads(pickle.dumps(2)) == 2  # restored afterwards


# ----------------------------------------------------------------------------- the default path, guarded


def default_path(workdir: Path, lm_dir: Path) -> dict[str, Any]:
    """A user's default path: the engine demo, then a checkpoint saved and loaded, the bundled MiniLM
    embedder, a persistent Chroma, ingest, answer, reopen and reindex; returns what the tests check."""
    from helpers.reliability import tiny_mac

    from mac_memory.cli import main
    from mac_memory.memory import MACMemory, SentenceTransformerEmbedder
    from mac_memory.model import MACModel

    assert main(["demo", "--engine"]) == 0

    ckpt = tiny_mac(str(lm_dir)).save_pretrained(workdir / "ckpt")
    files = sorted(p.name for p in ckpt.iterdir())
    mac = MACModel.from_pretrained(ckpt, device="cpu")
    memory = MACMemory(
        path=workdir / "mem",
        model=mac,
        embedder=SentenceTransformerEmbedder(num_threads=1),
        show_progress=False,
    )
    ids = memory.add_texts(["Velmora Quistan was born in Ostravel.", "Kado Fen plays the violin."])
    answer = memory.answer("Where was Velmora Quistan born?", k=2, max_new_tokens=3)
    reopened = MACMemory(
        path=workdir / "mem", checkpoint=ckpt, embedder=SentenceTransformerEmbedder(num_threads=1)
    )
    return {
        "checkpoint_files": files,
        "sources": sorted(s.id for s in answer.sources),
        "ids": sorted(ids),
        "reindexed": reopened.reindex(force=True),
        "telemetry": [
            memory.store.client.get_settings().anonymized_telemetry,
            reopened.store.client.get_settings().anonymized_telemetry,
        ],
    }


def _check_default_path(result: dict[str, Any]) -> None:
    assert result["sources"] == result["ids"] and result["reindexed"] == 2
    assert result["telemetry"] == [False, False]
    # A checkpoint is JSON and safetensors only: nothing in it can carry code.
    assert result["checkpoint_files"] == ["mac_config.json", "mac_manifest.json", "mac_model.safetensors"]


def test_default_path_touches_no_network_and_unpickles_nothing(tiny_path, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    # Turn the offline switches the test environment sets back off: what stays offline is the code.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("ANONYMIZED_TELEMETRY", "True")  # mac-memory's own clients must still say False
    lm_dir = tiny_path("llama")
    with loopback_only() as attempts, no_unpickling() as unpickled:
        result = default_path(tmp_path, lm_dir)
    capsys.readouterr()
    assert attempts == [], attempts
    assert unpickled == [], unpickled
    _check_default_path(result)


CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import test_reliability_loading as t
    with t.loopback_only() as attempts, t.no_unpickling() as unpickled:
        result = t.default_path(Path(sys.argv[2]), Path(sys.argv[3]))
    print(json.dumps({"attempts": attempts, "unpickled": unpickled, **result}))
    """
)


@pytest.mark.slow
def test_default_path_offline_in_a_fresh_process(tiny_path, tmp_path):
    """No offline switch in the environment, telemetry not disabled there, and (if possible) no network."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ANONYMIZED_TELEMETRY", "HF_DATASETS_OFFLINE")
    }
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-c",
        CHILD,
        str(Path(__file__).resolve().parent),
        str(tmp_path),
        str(tiny_path("llama")),
    ]
    isolated = (
        shutil.which("unshare")
        and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0
    )
    if isolated:
        cmd = ["unshare", "-rn", *cmd]  # a network namespace: not even loopback is up
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["attempts"] == [] and result["unpickled"] == [], result
    _check_default_path(result)
    print(f"default path in a fresh process: isolated network namespace: {bool(isolated)}")


def test_telemetry_is_off_in_every_client_mac_memory_creates(tmp_path, monkeypatch):
    from mac_memory.errors import StoreConnectionError
    from mac_memory.memory.store import ChromaStore

    monkeypatch.setenv("ANONYMIZED_TELEMETRY", "True")
    store = ChromaStore.open(collection="telemetry", path=tmp_path / "mem")
    assert store.client.get_settings().anonymized_telemetry is False
    seen: list[Any] = []
    import chromadb

    real = chromadb.HttpClient

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("settings"))
        return real(*args, **kwargs)

    monkeypatch.setattr(chromadb, "HttpClient", spy)
    with contextlib.suppress(StoreConnectionError):
        ChromaStore.open(collection="telemetry", host="127.0.0.1", port=9)  # nothing listens on port 9
    assert seen and seen[0] is not None and seen[0].anonymized_telemetry is False
