"""The checkpoint format of a :class:`~mac_memory.model.MACModel`.

A checkpoint is a directory::

    mac_config.json          MACConfig (JSON)
    mac_model.safetensors    the trainable networks' weights (never pickle)
    mac_manifest.json        format tag + version, sha256 of every file, the base LM's identity
                             (name/path, config hash, weight signature) and the networks' fingerprint
    backbone/                T5/BERT amortizers only: the backbone's config and tokenizer files

The base LM itself is referenced, not copied. Loading verifies the manifest, every checksum and the
base LM's identity before any weight is used, and explains what to do when something does not match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from .base_lms import file_sha256 as _sha256
from .config import MACConfig
from .errors import CheckpointError, ConfigError
from .frozen_lm import FrozenLM
from .version import __version__

if TYPE_CHECKING:
    from .model import MACModel

logger = logging.getLogger(__name__)

FORMAT = "mac-memory-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "mac_config.json"
WEIGHTS_FILE = "mac_model.safetensors"
MANIFEST_FILE = "mac_manifest.json"
BACKBONE_DIR = "backbone"


def state_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the networks' parameter names, shapes and bytes (independent of file layout)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(model: MACModel, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.config.save(path / CONFIG_FILE)
    save_model(model, str(path / WEIGHTS_FILE), metadata={"format": FORMAT, "mac_version": __version__})
    files = [CONFIG_FILE, WEIGHTS_FILE]
    backbone = getattr(model.amortizer, "backbone", None)
    if backbone is not None:
        backbone.config.save_pretrained(path / BACKBONE_DIR)
        model.amortizer.tokenizer.save_pretrained(path / BACKBONE_DIR)
        files += sorted(str(p.relative_to(path)) for p in (path / BACKBONE_DIR).rglob("*") if p.is_file())
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mac_version": __version__,
        "fingerprint": state_fingerprint(model),
        "base_lm": model.lm.identity(),
        # A base LM stored beside the checkpoint (e.g. the packaged default) is found again after a move.
        "base_lm_relpath": _relpath(model.lm.name_or_path, path),
        "files": {name: _sha256(path / name) for name in files},
    }
    (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("Saved MAC checkpoint to %s", path)
    return path


def _relpath(name_or_path: str, checkpoint: Path) -> str | None:
    local = Path(name_or_path)
    if not local.is_dir():
        return None  # a hub name
    return os.path.relpath(local.resolve(), checkpoint.resolve())


def resolve_base_lm(config: MACConfig, manifest: dict[str, Any], checkpoint: Path) -> str:
    """The recorded base LM: its hub name or path, or its location relative to a moved checkpoint."""
    recorded = config.base_lm.name_or_path
    rel = manifest.get("base_lm_relpath")
    looks_local = recorded.startswith(("/", ".", "~"))  # hub names never start like a path
    if rel and not Path(recorded).is_dir() and (checkpoint / rel).is_dir():
        return str((checkpoint / rel).resolve())
    if looks_local and not Path(recorded).exists():
        raise CheckpointError(f"Checkpoint {checkpoint} was trained on the base LM at {recorded}, which does not "
                              "exist here. Pass lm=<path or FrozenLM> to load it onto that LM.")
    return recorded


def read_manifest(path: Path) -> dict[str, Any]:
    """The verified manifest of a checkpoint directory (format, checksums); raises CheckpointError."""
    if not path.is_dir():
        raise CheckpointError(f"No checkpoint directory at {path}. Train one with `mac-memory train` "
                              "or pass the directory that save_pretrained() wrote.")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{path} is not a mac-memory checkpoint: {MANIFEST_FILE} is missing.")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{manifest_path} is corrupt ({exc}).") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mac-memory checkpoint (manifest format "
                              f"{manifest.get('format') if isinstance(manifest, dict) else None!r}).")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} uses checkpoint format {manifest['format_version']}, newer than this "
                              f"mac-memory {__version__} reads ({FORMAT_VERSION}); upgrade mac-memory.")
    for name, expected in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"Checkpoint {path} is incomplete: {name} is missing. Re-copy or re-save it.")
        if _sha256(file) != expected:
            raise CheckpointError(f"Checkpoint {path} is corrupt: the checksum of {name} does not match its "
                                  "manifest (truncated or modified file). Re-copy or re-save it.")
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if required not in manifest.get("files", {}):
            raise CheckpointError(f"Checkpoint {path}: the manifest does not list {required}.")
    return manifest


def load_checkpoint(cls: type[MACModel], path: Path, *, lm: FrozenLM | str | None, device: str | None
                    ) -> MACModel:
    manifest = read_manifest(path)
    try:
        config = MACConfig.load(path / CONFIG_FILE)
    except ConfigError as exc:
        raise CheckpointError(f"Checkpoint {path} has an invalid {CONFIG_FILE}: {exc}") from exc
    if not isinstance(lm, FrozenLM):
        b = config.base_lm
        lm = FrozenLM.from_pretrained(lm or resolve_base_lm(config, manifest, path), dtype=b.dtype, revision=b.revision,
                                     gguf_file=None if lm else b.gguf_file, device=device)
    lm.check_identity(manifest["base_lm"], what=f"Checkpoint {path}")

    backbone = tokenizer = None
    if config.amortizer.kind != "kv_anchored":
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        backbone = AutoModel.from_config(AutoConfig.from_pretrained(path / BACKBONE_DIR))
        tokenizer = AutoTokenizer.from_pretrained(path / BACKBONE_DIR)
    model = cls(config, lm, backbone=backbone, tokenizer=tokenizer)
    try:
        missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False, device=str(lm.device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"Cannot read {path / WEIGHTS_FILE}: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(f"Checkpoint {path} does not fit its config: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}.")
    return model.eval()
