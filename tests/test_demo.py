"""The README's demo command: the engine demo runs in seconds and shows what a user looks at."""

from __future__ import annotations

from mac_memory.cli import main


def test_engine_demo_amortizes_aggregates_and_generates(capsys):
    assert main(["demo", "--engine"]) == 0
    out = capsys.readouterr().out
    assert "bytes per document" in out
    weights = [float(line.split()[1]) for line in out.splitlines() if line.strip().startswith("weight ")]
    assert len(weights) == 3 and abs(sum(weights) - 1.0) < 1e-3  # one provenance weight per document


def test_demo_without_a_default_and_without_training_explains_what_to_do(tmp_path, monkeypatch):
    from mac_memory.errors import CheckpointError
    from mac_memory.training import default

    monkeypatch.setenv("MAC_MEMORY_HOME", str(tmp_path))
    monkeypatch.delenv("MAC_MEMORY_CHECKPOINT", raising=False)
    monkeypatch.setattr(default, "PACKAGED", tmp_path / "nothing-packaged")
    try:
        default.default_paths(train=False)
    except CheckpointError as exc:
        assert "mac-memory demo" in str(exc)
    else:  # pragma: no cover - the assertion below documents the failure
        raise AssertionError("default_paths(train=False) must refuse when no default exists")
