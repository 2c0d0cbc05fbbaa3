"""Packaging contract of the LlamaIndex distributions: import paths, base classes, fields, PEP 420 layout."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# (distribution directory, import path, exported names)
PACKAGES = [
    ("llama-index-llms-mac-memory", "llama_index.llms.mac_memory", ["MACMemoryLLM"]),
    (
        "llama-index-retrievers-mac-memory",
        "llama_index.retrievers.mac_memory",
        ["MAC_METADATA_KEYS", "MACMemoryRetriever"],
    ),
    ("llama-index-memory-mac-memory", "llama_index.memory.mac_memory", ["MACMemoryBlock"]),
]


@pytest.mark.parametrize(("dist", "module", "exported"), PACKAGES)
def test_import_path_and_all_are_locked(dist: str, module: str, exported: list[str]) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(exported)
    for name in exported:
        assert getattr(mod, name) is not None
    # The module comes from this repository's distribution directory (not a stale install elsewhere).
    assert Path(mod.__file__).resolve().is_relative_to(ROOT / dist)


@pytest.mark.parametrize(("dist", "module", "exported"), PACKAGES)
def test_distribution_layout_is_pep420(dist: str, module: str, exported: list[str]) -> None:
    base = ROOT / dist
    parts = module.split(".")  # llama_index.<type>.mac_memory
    assert not (base / parts[0] / "__init__.py").exists()
    assert not (base / parts[0] / parts[1] / "__init__.py").exists()
    package = base.joinpath(*parts)
    assert (package / "__init__.py").is_file()
    assert (package / "py.typed").is_file()
    assert (base / "README.md").is_file()

    project = tomllib.loads((base / "pyproject.toml").read_text())["project"]
    assert project["name"] == dist == f"llama-index-{parts[1]}-mac-memory"
    deps = project["dependencies"]
    assert any(d.replace(" ", "").startswith("mac-memory[memory]") for d in deps)
    assert "llama-index-core>=0.14,<0.15" in [d.replace(" ", "") for d in deps]


def test_base_classes() -> None:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.llms import LLM, CustomLLM
    from llama_index.core.memory import BaseMemoryBlock
    from llama_index.llms.mac_memory import MACMemoryLLM
    from llama_index.memory.mac_memory import MACMemoryBlock
    from llama_index.retrievers.mac_memory import MACMemoryRetriever

    assert issubclass(MACMemoryLLM, CustomLLM) and issubclass(MACMemoryLLM, LLM)
    assert issubclass(MACMemoryRetriever, BaseRetriever)
    assert issubclass(MACMemoryBlock, BaseMemoryBlock)


def test_instances_hold_the_memory_privately(make_memory: Any) -> None:
    from llama_index.core.llms import CustomLLM
    from llama_index.core.memory import BaseMemoryBlock
    from llama_index.llms.mac_memory import MACMemoryLLM
    from llama_index.memory.mac_memory import MACMemoryBlock

    memory = make_memory()
    llm = MACMemoryLLM(memory, k=3, namespace="u1", max_new_tokens=5)
    block = MACMemoryBlock(memory, namespace="u1")
    assert isinstance(llm, CustomLLM) and isinstance(block, BaseMemoryBlock)
    assert llm.memory is memory and block.memory is memory
    for obj in (llm, block):
        cls = type(obj)
        assert "_memory" in cls.__private_attributes__
        assert "memory" not in cls.model_fields
        dumped = obj.model_dump()
        assert "memory" not in dumped and "_memory" not in dumped
    assert llm.to_dict()["k"] == 3 and llm.to_dict()["class_name"] == "MACMemoryLLM"


@pytest.mark.parametrize(
    ("cls_path", "own_fields"),
    [
        (
            "llama_index.llms.mac_memory:MACMemoryLLM",
            ["k", "namespace", "where", "prefer_newest", "max_new_tokens", "history_turns", "context_window"],
        ),
        ("llama_index.memory.mac_memory:MACMemoryBlock", ["name", "description", "namespace", "note"]),
    ],
)
def test_pydantic_fields_have_descriptions(cls_path: str, own_fields: list[str]) -> None:
    module, name = cls_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    for field in own_fields:
        info = cls.model_fields[field]
        assert info.description and len(info.description) > 10, f"{name}.{field} has no description"


def test_constructors_refuse_bad_input(make_memory: Any) -> None:
    from llama_index.llms.mac_memory import MACMemoryLLM
    from llama_index.memory.mac_memory import MACMemoryBlock
    from llama_index.retrievers.mac_memory import MACMemoryRetriever

    from mac_memory.errors import InputTypeError, InvalidInputError

    for cls in (MACMemoryLLM, MACMemoryBlock, MACMemoryRetriever):
        with pytest.raises(InputTypeError, match="MACMemory"):
            cls("not a memory")
    memory = make_memory()
    with pytest.raises(ValueError, match="namespace"):
        MACMemoryLLM(memory, namespace="a/b")
    with pytest.raises(ValueError, match="namespace"):
        MACMemoryBlock(memory, namespace="")
    with pytest.raises(ValueError, match="greater than 0"):
        MACMemoryLLM(memory, k=0)
    with pytest.raises(InvalidInputError, match="k=0"):
        MACMemoryRetriever(memory, k=0)
    with pytest.raises(InvalidInputError, match="namespace"):
        MACMemoryRetriever(memory, namespace="a/b")
