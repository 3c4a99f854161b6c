#!/usr/bin/env bash
# Train the LoRA adapter that ships inside the package (whyrec/explainer/adapters/), on the training
# shoppers of two shops: the Amazon Office set and the bundled sample shop. Amazon Scientific is
# left out on purpose: it is the shop the adapter has never seen, where it is measured.
# Fixed seed; the shops' data fingerprints and the training loss land in whyrec_adapter.json.
# ~12 minutes on 2 CPU cores (measured: bench/results/tune_shipped_adapter.json). Extra arguments go to `whyrec explainer tune`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=PASSIVE
DATA="${WHYREC_SHARED_DATA:-../shared/data}"
exec .venv/bin/whyrec explainer tune \
  --data "$DATA/amazon-office" --data whyrec/sample_data \
  --examples 480 --rank 8 --seed 0 --eval-users 0 \
  --out whyrec/explainer/adapters/smollm2-135m-instruct/lora-shopper.v4 "$@"
