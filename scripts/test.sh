#!/usr/bin/env bash
# One command for a newcomer: set up ./.venv, then run the default (fast, offline) test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the slow suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
