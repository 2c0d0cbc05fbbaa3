"""Test-only constants and helpers shared by the test modules (not part of the library)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""Repository root (put on ``PYTHONPATH`` for subprocesses when the package is not installed)."""

CAUSAL = ("gpt2", "llama", "qwen2")
KINDS = ("kv_anchored", "t5", "encoder")

DOCS = [
    "Paris is the capital of France.",
    "Kado Fen works for Brindlecorp as an engineer since 1987.",
    "The quick brown fox jumps over the lazy dog.",
]
QUESTIONS = ["Where is Paris?", "Who does Kado Fen work for?"]
ANSWERS = ["France", "Brindlecorp"]
