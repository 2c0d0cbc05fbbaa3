"""Checkpoints: an exact round-trip in a fresh process, and clear errors for every way loading can go wrong.

A user would notice failures here as a reloaded model answering differently from the one that was saved,
a stale/corrupt checkpoint silently loaded, or a checkpoint used with a base LM it was not trained for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import DOCS, QUESTIONS, ROOT
from safetensors.torch import load_file

from mac_memory.checkpoint import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE, _sha256
from mac_memory.config import BaseLMConfig
from mac_memory.errors import BaseModelMismatchError, CheckpointError
from mac_memory.model import MACModel

ROUND_TRIP = [("kv_anchored", "llama"), ("t5", "gpt2")]
NEW_TOKENS = 5

# Runs in a new interpreter: loads each checkpoint by directory alone (the base LM path comes from the
# checkpoint's config) and writes modulations and greedy answers for fixed inputs.
CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    from safetensors.torch import save_file
    from mac_memory.model import MACModel

    jobs, docs, questions, new_tokens, threads = json.loads(sys.argv[1])
    torch.set_num_threads(threads)  # the parent's count: same reduction order, bit-identical results
    for ckpt, out in jobs:
        mac = MACModel.from_pretrained(ckpt)
        with torch.no_grad():
            memory = mac.amortize(docs)
            prefix, weights = mac.modulate(questions, memory)
            answers, _ = mac.generate(questions, memory, max_new_tokens=new_tokens)
        tensors = {"memory": memory, "keys": prefix.keys, "values": prefix.values, "weights": weights}
        save_file({k: v.contiguous() for k, v in tensors.items()}, out + ".safetensors")
        with open(out + ".json", "w") as f:
            json.dump({"answers": answers, "fingerprint": mac.fingerprint(),
                       "base_lm": mac.lm.name_or_path}, f)
    """
)


def _trained_like(mac: MACModel, seed: int = 1) -> MACModel:
    """Move every weight away from its initial value, so a weight that is not loaded cannot go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mac.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return mac.eval()


def _outputs(mac: MACModel) -> dict:
    with torch.no_grad():
        memory = mac.amortize(DOCS)
        prefix, weights = mac.modulate(QUESTIONS, memory)
        answers, _ = mac.generate(QUESTIONS, memory, max_new_tokens=NEW_TOKENS)
    return {
        "memory": memory,
        "keys": prefix.keys,
        "values": prefix.values,
        "weights": weights,
        "answers": answers,
    }


@pytest.fixture(scope="module")
def round_trip(make_mac, tmp_path_factory):
    """Save both models, then load and run them in one child process (one interpreter start for both)."""
    root = tmp_path_factory.mktemp("round-trip")
    models, jobs = {}, []
    for kind, family in ROUND_TRIP:
        mac = _trained_like(make_mac(kind, family, prefix_len=6))
        ckpt = mac.save_pretrained(root / f"{kind}-{family}")
        models[kind, family] = mac
        jobs.append([str(ckpt), str(root / f"out-{kind}-{family}")])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            json.dumps([jobs, DOCS, QUESTIONS, NEW_TOKENS, torch.get_num_threads()]),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"child process failed:\n{proc.stderr[-4000:]}"
    return models, {key: job[1] for key, job in zip(models, jobs, strict=True)}


@pytest.mark.parametrize(("kind", "family"), ROUND_TRIP, ids=[f"{k}-{f}" for k, f in ROUND_TRIP])
def test_reloaded_in_new_process_gives_identical_modulations_and_answers(round_trip, kind, family):
    """A checkpoint loaded from disk in another process reproduces modulations bit for bit, and the answers."""
    models, outputs = round_trip
    mac = models[kind, family]
    expected = _outputs(mac)
    child = load_file(outputs[kind, family] + ".safetensors")
    meta = json.loads(Path(outputs[kind, family] + ".json").read_text())
    for name in ("memory", "keys", "values", "weights"):
        assert child[name].shape == expected[name].shape, name
        assert torch.equal(child[name], expected[name]), f"{name} differs after the round-trip"
    assert meta["answers"] == expected["answers"]
    assert meta["fingerprint"] == mac.fingerprint()
    assert meta["base_lm"] == mac.config.base_lm.name_or_path


@pytest.fixture(scope="module")
def saved(make_mac, tmp_path_factory) -> tuple[MACModel, Path]:
    """A small kv_anchored/llama checkpoint, written once; tests that damage it work on a copy."""
    mac = _trained_like(make_mac("kv_anchored", "llama"))
    return mac, mac.save_pretrained(tmp_path_factory.mktemp("saved") / "ckpt")


@pytest.fixture
def ckpt(saved, tmp_path) -> Path:
    """A private copy of the saved checkpoint, free to damage."""
    return Path(shutil.copytree(saved[1], tmp_path / "ckpt"))


def test_reload_in_process_keeps_every_weight(saved, lms):
    """Same process, explicit LM: all parameters come back exactly (the fingerprint is the weights' hash)."""
    mac, path = saved
    loaded = MACModel.from_pretrained(path, lm=lms["llama"])
    assert loaded.fingerprint() == mac.fingerprint()
    theirs = dict(loaded.named_parameters())
    assert all(torch.equal(p, theirs[n]) for n, p in mac.named_parameters())
    assert not loaded.training


def test_checkpoint_moved_together_with_its_base_lm_still_loads(saved, tiny_paths, tmp_path):
    """A (base_lm, mac) pair copied elsewhere (e.g. shipped in a package) finds its LM beside it."""
    from mac_memory.frozen_lm import FrozenLM

    mac, _ = saved
    pair = tmp_path / "pair"
    shutil.copytree(tiny_paths["llama"], pair / "base_lm")
    lm = FrozenLM.from_pretrained(pair / "base_lm", device="cpu")
    moved_from = MACModel(replace(mac.config, base_lm=BaseLMConfig(str(pair / "base_lm"))), lm)
    moved_from.load_state_dict(mac.state_dict())
    moved_from.save_pretrained(pair / "mac")
    shutil.move(str(pair), str(tmp_path / "moved"))
    loaded = MACModel.from_pretrained(tmp_path / "moved" / "mac")  # recorded path is gone: relative path used
    assert Path(loaded.lm.name_or_path) == (tmp_path / "moved" / "base_lm").resolve()
    assert loaded.fingerprint() == mac.fingerprint()


def test_checkpoint_whose_local_base_lm_is_gone_says_so(saved, tiny_paths, tmp_path):
    mac, _ = saved
    shutil.copytree(tiny_paths["llama"], tmp_path / "lm")
    from mac_memory.frozen_lm import FrozenLM

    config = replace(mac.config, base_lm=BaseLMConfig(str(tmp_path / "lm")))
    own = MACModel(config, FrozenLM.from_pretrained(tmp_path / "lm", device="cpu"))
    own.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "lm")
    with pytest.raises(CheckpointError, match="does not exist here"):
        MACModel.from_pretrained(tmp_path / "ckpt")


def test_same_lm_in_bfloat16_is_accepted(saved, frozen_lm):
    """The base LM's identity ignores the load dtype: a float32-trained checkpoint serves the bfloat16 LM."""
    _, path = saved
    loaded = MACModel.from_pretrained(path, lm=frozen_lm("llama", dtype="bfloat16"))
    assert loaded.lm.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("variant", "words"),
    [
        ({"seed": 1}, ["different weights"]),
        ({"kv_heads": 4}, ["different config", "num_key_value_heads", "2", "4"]),
        ({"layers": 3}, ["different config", "num_hidden_layers"]),
    ],
    ids=["other-seed", "other-kv-heads", "other-depth"],
)
def test_load_onto_a_different_base_lm_is_refused(saved, frozen_lm, variant, words):
    """A checkpoint only serves the LM it was trained for; the error says what differs."""
    _, path = saved
    other = frozen_lm("llama", **variant)
    with pytest.raises(BaseModelMismatchError) as info:
        MACModel.from_pretrained(path, lm=other)
    message = str(info.value)
    for word in words:
        assert word in message
    assert str(path) in message


def test_load_onto_another_family_by_path_is_refused(saved, tiny_paths):
    """Passing the LM as a path: a gpt2 LM for a llama checkpoint is refused before any weight is used."""
    _, path = saved
    with pytest.raises(BaseModelMismatchError, match="different config"):
        MACModel.from_pretrained(path, lm=str(tiny_paths["gpt2"]))


def _rewrite_manifest(ckpt: Path, **changes) -> None:
    manifest = json.loads((ckpt / MANIFEST_FILE).read_text())
    manifest.update(changes)
    (ckpt / MANIFEST_FILE).write_text(json.dumps(manifest))


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _set_config(ckpt: Path, section: str, key: str, value) -> None:
    """Edit the config *and* its checksum: the file is intact, its content is not usable."""
    config = json.loads((ckpt / CONFIG_FILE).read_text())
    config[section][key] = value
    (ckpt / CONFIG_FILE).write_text(json.dumps(config))
    manifest = json.loads((ckpt / MANIFEST_FILE).read_text())
    manifest["files"][CONFIG_FILE] = _sha256(ckpt / CONFIG_FILE)
    (ckpt / MANIFEST_FILE).write_text(json.dumps(manifest))


DAMAGE = {
    "no-manifest": (lambda c: (c / MANIFEST_FILE).unlink(), [MANIFEST_FILE, "missing"]),
    "no-weights": (lambda c: (c / WEIGHTS_FILE).unlink(), [WEIGHTS_FILE, "missing"]),
    "no-config": (lambda c: (c / CONFIG_FILE).unlink(), [CONFIG_FILE, "missing"]),
    "truncated-weights": (lambda c: _truncate(c / WEIGHTS_FILE), ["checksum", WEIGHTS_FILE]),
    "flipped-byte-weights": (lambda c: _flip_byte(c / WEIGHTS_FILE, -7), ["checksum", WEIGHTS_FILE]),
    "flipped-byte-config": (lambda c: _flip_byte(c / CONFIG_FILE, 5), ["checksum", CONFIG_FILE]),
    "other-format": (
        lambda c: _rewrite_manifest(c, format="peft-adapter"),
        ["not a mac-memory", "peft-adapter"],
    ),
    "newer-format": (lambda c: _rewrite_manifest(c, format_version=99), ["format 99", "upgrade"]),
    "manifest-not-json": (lambda c: (c / MANIFEST_FILE).write_text("{not json"), ["corrupt", MANIFEST_FILE]),
    "manifest-not-object": (lambda c: (c / MANIFEST_FILE).write_text("[1, 2]"), ["not a mac-memory"]),
    "bad-config-value": (lambda c: _set_config(c, "amortizer", "num_tokens", 0), ["num_tokens", "0"]),
    "config-does-not-fit-weights": (lambda c: _set_config(c, "amortizer", "num_tokens", 5), ["mac_model"]),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_refused_with_a_clear_message(ckpt, lms, damage):
    """Missing, truncated, modified or foreign files raise CheckpointError naming the problem, never load."""
    apply, words = DAMAGE[damage]
    apply(ckpt)
    with pytest.raises(CheckpointError) as info:
        MACModel.from_pretrained(ckpt, lm=lms["llama"])
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize("where", ["missing-dir", "a-file", "hf-model-dir"])
def test_not_a_checkpoint_directory(tmp_path, tiny_paths, lms, where):
    """Pointing at nothing, at a file, or at a plain HF model directory says it is not a MAC checkpoint."""
    target = {
        "missing-dir": tmp_path / "nowhere",
        "a-file": tmp_path / "file.txt",
        "hf-model-dir": tiny_paths["llama"],
    }[where]
    if where == "a-file":
        target.write_text("x")
    expected = MANIFEST_FILE if where == "hf-model-dir" else "No checkpoint directory"
    with pytest.raises(CheckpointError, match=expected):
        MACModel.from_pretrained(target, lm=lms["llama"])
