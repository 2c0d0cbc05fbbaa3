#!/usr/bin/env bash
# One command for a newcomer: set up ./.venv, then run the demo (arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" ANONYMIZED_TELEMETRY=False
exec .venv/bin/mac-memory demo "$@"
