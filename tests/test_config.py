"""MACConfig: exact JSON round-trips, forward-compatible loading, and errors that name the bad field and value.

A user would notice failures here as a saved model that reloads with different settings, a config from a
newer version that cannot be read at all, or a vague crash deep inside training for a typo in a config.
"""

from __future__ import annotations

import json
import warnings

import pytest

from mac_memory.config import (
    AggregatorConfig,
    AmortizerConfig,
    BaseLMConfig,
    MACConfig,
    ModulationConfig,
)
from mac_memory.errors import ConfigError, MACError

CONFIGS = {
    "defaults": lambda: MACConfig(base_lm=BaseLMConfig("gpt2")),
    "t5-custom": lambda: MACConfig(
        base_lm=BaseLMConfig("Qwen/Qwen2.5-0.5B", dtype="bfloat16", revision="abc123"),
        amortizer=AmortizerConfig(
            kind="t5", backbone="t5-small", num_tokens=12, d_mem=64, freeze_backbone=True
        ),
        aggregator=AggregatorConfig(num_layers=1, num_heads=2, mlp_ratio=1.5, window=3, dropout=0.1),
        modulation=ModulationConfig(prefix_len=7, hidden=16),
        question_max_length=17,
    ),
    "encoder": lambda: MACConfig(
        base_lm=BaseLMConfig("/models/llama"),
        amortizer=AmortizerConfig(kind="encoder", backbone="/models/minilm", d_mem=48, decoder_heads=6),
        aggregator=AggregatorConfig(num_heads=6),
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_json_round_trip_is_exact(name, tmp_path):
    """to_json → from_dict, and save → load, give back an equal config (every field, every section)."""
    config = CONFIGS[name]()
    assert MACConfig.from_dict(json.loads(config.to_json())) == config
    config.save(tmp_path / "mac_config.json")
    assert MACConfig.load(tmp_path / "mac_config.json") == config
    assert config.to_json() == MACConfig.load(tmp_path / "mac_config.json").to_json()  # stable text


def test_sections_may_be_given_as_dicts():
    """Plain dicts (as read from JSON) are accepted for every section and validated the same way."""
    config = CONFIGS["t5-custom"]()
    as_dicts = MACConfig(**{k: v for k, v in config.to_dict().items() if k != "mac_version"})
    assert as_dicts == config


@pytest.mark.parametrize(("prefix_len", "expected"), [(None, 12), (5, 5)])
def test_prefix_len_defaults_to_num_tokens_and_is_not_stored(prefix_len, expected):
    """One prefix position per memory token unless set; the derived value never leaks into the JSON."""
    config = MACConfig(
        base_lm=BaseLMConfig("gpt2"),
        amortizer=AmortizerConfig(num_tokens=12),
        modulation=ModulationConfig(prefix_len=prefix_len),
    )
    assert config.prefix_len == expected
    assert json.loads(config.to_json())["modulation"]["prefix_len"] == prefix_len


INVALID = [
    pytest.param(lambda: AmortizerConfig(kind="x"), "kind", "'x'", id="amortizer-kind"),
    pytest.param(lambda: AmortizerConfig(num_tokens=0), "num_tokens", "0", id="num_tokens-zero"),
    pytest.param(lambda: AmortizerConfig(num_tokens=True), "num_tokens", "True", id="num_tokens-bool"),
    pytest.param(lambda: AmortizerConfig(d_mem=30), "d_mem", "30", id="d_mem-not-divisible-by-heads"),
    pytest.param(lambda: AmortizerConfig(head_hidden=-4), "head_hidden", "-4", id="head_hidden-negative"),
    pytest.param(lambda: AmortizerConfig(kind="t5"), "backbone", "None", id="t5-without-backbone"),
    pytest.param(
        lambda: AmortizerConfig(kind="encoder", backbone=""), "backbone", "''", id="encoder-empty-backbone"
    ),
    pytest.param(
        lambda: AmortizerConfig(backbone="t5-small"), "backbone", "'t5-small'", id="kv_anchored-backbone"
    ),
    pytest.param(lambda: AggregatorConfig(window=1), "window", "1", id="window-1"),
    pytest.param(lambda: AggregatorConfig(num_layers=0), "num_layers", "0", id="num_layers-zero"),
    pytest.param(lambda: AggregatorConfig(dropout=1.0), "dropout", "1.0", id="dropout-one"),
    pytest.param(lambda: AggregatorConfig(mlp_ratio=0), "mlp_ratio", "0", id="mlp_ratio-zero"),
    pytest.param(
        lambda: AggregatorConfig(mlp_ratio="2"), "mlp_ratio", "'2'", id="mlp_ratio-str"
    ),
    pytest.param(
        lambda: AggregatorConfig(dropout="0.1"), "dropout", "'0.1'", id="dropout-str"
    ),
    pytest.param(lambda: BaseLMConfig("gpt2", dtype="int8"), "dtype", "'int8'", id="dtype-int8"),
    pytest.param(lambda: BaseLMConfig("   "), "name_or_path", "'   '", id="blank-base-lm"),
    pytest.param(lambda: ModulationConfig(kind="lora"), "kind", "'lora'", id="modulation-kind"),
    pytest.param(lambda: ModulationConfig(prefix_len=0), "prefix_len", "0", id="prefix_len-zero"),
    pytest.param(lambda: ModulationConfig(hidden=2.5), "hidden", "2.5", id="hidden-float"),
    pytest.param(
        lambda: MACConfig(
            base_lm=BaseLMConfig("gpt2"),
            amortizer=AmortizerConfig(d_mem=32),
            aggregator=AggregatorConfig(num_heads=3),
        ),
        "num_heads",
        "3",
        id="aggregator-heads-do-not-divide-d_mem",
    ),
    pytest.param(
        lambda: MACConfig(base_lm=BaseLMConfig("gpt2"), question_max_length=0),
        "question_max_length",
        "0",
        id="question_max_length-zero",
    ),
    pytest.param(
        lambda: MACConfig.from_dict({"base_lm": {"name_or_path": "gpt2"}, "aggregator": {"window": 0}}),
        "window",
        "0",
        id="from-json-window-0",
    ),
]


@pytest.mark.parametrize(("build", "field", "value"), INVALID)
def test_invalid_value_names_field_and_value(build, field, value):
    """Each invalid value raises ConfigError (a ValueError) whose message shows ``field=value``."""
    with pytest.raises(ConfigError) as info:
        build()
    message = str(info.value)
    assert f"{field}={value}" in message, message
    assert isinstance(info.value, ValueError) and isinstance(info.value, MACError)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"amortizer": {"kind": "t5"}}, ["base_lm"]),
        ([1, 2], ["JSON object", "list"]),
        ({"base_lm": "gpt2"}, ["base_lm", "dict", "str"]),
        ({"base_lm": {"name_or_path": "gpt2"}, "modulation": 3}, ["modulation", "int"]),
    ],
    ids=["no-base_lm", "not-an-object", "section-not-an-object", "section-wrong-type"],
)
def test_malformed_config_json_is_a_config_error(data, words):
    """Structurally wrong JSON raises ConfigError naming what is wrong, not a KeyError/TypeError."""
    with pytest.raises(ConfigError) as info:
        MACConfig.from_dict(data)
    for word in words:
        assert word in str(info.value)


def test_config_file_that_is_not_json(tmp_path):
    path = tmp_path / "mac_config.json"
    path.write_text("{base_lm: gpt2")
    with pytest.raises(ConfigError, match="not valid JSON"):
        MACConfig.load(path)


def test_unknown_keys_warn_and_are_ignored(tmp_path):
    """A config written by a newer version loads with a UserWarning naming the ignored keys."""
    config = CONFIGS["t5-custom"]()
    data = config.to_dict()
    data["retrieval"] = {"top_k": 5}
    data["amortizer"]["rope_scaling"] = 2.0
    data["base_lm"]["trust_remote_code"] = True
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning) as record:
        loaded = MACConfig.load(tmp_path / "c.json")
    messages = " ".join(str(w.message) for w in record)
    for key in ("retrieval", "rope_scaling", "trust_remote_code"):
        assert key in messages
    assert loaded == config


def test_known_keys_load_without_warnings():
    """The control for the test above: a config's own JSON loads silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MACConfig.from_dict(json.loads(CONFIGS["encoder"]().to_json()))
