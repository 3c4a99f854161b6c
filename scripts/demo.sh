#!/usr/bin/env bash
# Set up (if needed) and launch the demo on http://127.0.0.1:7860 with the bundled sample store.
# Extra arguments go to `whyrec demo` (e.g. --data ../shared/data/amazon-office --port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=PASSIVE GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/whyrec demo "$@"
