"""Shared fixtures: tiny models built once per session, frozen LMs loaded once, small MAC models on demand.

Everything is built in-process (no hub access): :func:`mac_memory.tiny_models.save_tiny` writes each tiny
model to a session temp directory, and the real ``from_pretrained`` loaders read it back. Frozen LMs
never change, so one instance per (family, dtype) is shared by every test.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the suite also runs from a plain checkout (package not installed)
    sys.path.insert(0, str(ROOT))

from helpers import CAUSAL  # noqa: E402

if TYPE_CHECKING:
    from mac_memory.config import MACConfig
    from mac_memory.frozen_lm import FrozenLM
    from mac_memory.model import MACModel

# The tiny tensors here gain nothing from several threads, and on a shared 2-core machine OpenMP threads
# spin-wait on each other (2-10x slower). MAC_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("MAC_TEST_THREADS", "1")))

# Sizes of the tiny models per family (the causal ones use save_tiny's defaults: hidden 64, 2 layers, 4 heads).
TINY_KWARGS: dict[str, dict[str, Any]] = {
    "gpt2": {},
    "llama": {},
    "qwen2": {},
    "t5": {"hidden": 32},
    "bert": {"hidden": 32},
}
BACKBONE_FAMILY = {"kv_anchored": None, "t5": "t5", "encoder": "bert"}


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_path(family, seed=0, **config)``: directory of a tiny saved model, built once per variant."""
    from mac_memory.tiny_models import save_tiny

    root = tmp_path_factory.mktemp("tiny")
    built: dict[tuple, Path] = {}

    def get(family: str, seed: int = 0, **config: Any) -> Path:
        kwargs = {**TINY_KWARGS.get(family, {}), **config}
        key = (family, seed, tuple(sorted(kwargs.items())))
        if key not in built:
            name = "-".join([family, f"s{seed}", *(f"{k}{v}" for k, v in sorted(kwargs.items()))])
            built[key] = save_tiny(family, root / name, seed=seed, **kwargs)
        return built[key]

    return get


@pytest.fixture(scope="session")
def tiny_paths(tiny_path: Callable[..., Path]) -> dict[str, Path]:
    """The five default tiny models: gpt2, llama (GQA 4q/2kv), qwen2 (1 kv head), t5 and bert (hidden 32)."""
    return {family: tiny_path(family) for family in TINY_KWARGS}


@pytest.fixture(scope="session")
def frozen_lm(tiny_paths: dict[str, Path], tiny_path: Callable[..., Path]) -> Callable[..., FrozenLM]:
    """``frozen_lm(family, dtype="float32", seed=0, **config)``: a shared, frozen, CPU FrozenLM."""
    from mac_memory.frozen_lm import FrozenLM

    loaded: dict[tuple, FrozenLM] = {}

    def get(family: str, dtype: str = "float32", seed: int = 0, **config: Any) -> FrozenLM:
        key = (family, dtype, seed, tuple(sorted(config.items())))
        if key not in loaded:
            path = (
                tiny_paths[family] if (seed == 0 and not config) else tiny_path(family, seed=seed, **config)
            )
            loaded[key] = FrozenLM.from_pretrained(path, dtype=dtype, device="cpu")
        return loaded[key]

    return get


@pytest.fixture(scope="session")
def lms(frozen_lm: Callable[..., FrozenLM]) -> dict[str, FrozenLM]:
    """The three float32 causal LMs by family."""
    return {family: frozen_lm(family) for family in CAUSAL}


def _split_overrides(overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Route flat keyword overrides (``window=8``, ``prefix_len=6``) to the config section that has them."""
    from mac_memory.config import AggregatorConfig, AmortizerConfig, MACConfig, ModulationConfig

    sections: dict[str, dict[str, Any]] = {"amortizer": {}, "aggregator": {}, "modulation": {}, "top": {}}
    owners = [
        ("amortizer", AmortizerConfig),
        ("aggregator", AggregatorConfig),
        ("modulation", ModulationConfig),
        ("top", MACConfig),
    ]
    for key, value in overrides.items():
        section, _, name = key.rpartition("__")  # "modulation__kind" picks a section explicitly
        for owner, cls in owners:
            if (not section or section == owner) and name in {f.name for f in dataclasses.fields(cls)}:
                sections[owner][name] = value
                break
        else:
            raise KeyError(f"make_mac: no config section has a field {key!r}")
    return sections


@pytest.fixture(scope="session")
def make_config(tiny_paths: dict[str, Path]) -> Callable[..., MACConfig]:
    """``make_config(kind, lm_family, **overrides)``: a small MACConfig (d_mem 32, T 4, 2 aggregator layers)."""

    from mac_memory.config import AggregatorConfig, AmortizerConfig, BaseLMConfig, MACConfig, ModulationConfig

    def build(kind: str = "kv_anchored", lm_family: str = "gpt2", **overrides: Any) -> MACConfig:
        s = _split_overrides(overrides)
        backbone = BACKBONE_FAMILY[kind]
        amortizer = {
            "kind": kind,
            "backbone": str(tiny_paths[backbone]) if backbone else None,
            "num_tokens": 4,
            "d_mem": 32,
            "head_hidden": 32,
            "decoder_heads": 4,
            "decoder_layers": 1,
            "max_length": 64,
            **s["amortizer"],
        }
        aggregator = {"num_layers": 2, "num_heads": 4, "window": 4, **s["aggregator"]}
        modulation = {"hidden": 32, **s["modulation"]}
        return MACConfig(
            base_lm=BaseLMConfig(str(tiny_paths[lm_family])),
            amortizer=AmortizerConfig(**amortizer),
            aggregator=AggregatorConfig(**aggregator),
            modulation=ModulationConfig(**modulation),
            **{"question_max_length": 32, **s["top"]},
        )

    return build


@pytest.fixture(scope="session")
def make_mac(
    make_config: Callable[..., MACConfig], frozen_lm: Callable[..., FrozenLM]
) -> Callable[..., MACModel]:
    """``make_mac(kind, lm_family, seed=0, lm=None, **overrides)``: a small MACModel, deterministic by seed."""
    from mac_memory.model import MACModel

    def build(
        kind: str = "kv_anchored",
        lm_family: str = "gpt2",
        *,
        seed: int = 0,
        lm: FrozenLM | None = None,
        **overrides: Any,
    ) -> MACModel:
        config = make_config(kind, lm_family, **overrides)
        torch.manual_seed(seed)
        return MACModel(config, lm or frozen_lm(lm_family))

    return build
