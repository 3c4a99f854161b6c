#!/usr/bin/env bash
# A separate virtualenv with RecBole 1.2.1 (.venv-recbole), for the SASRec peer baseline that
# `whyrec eval ranker` compares against (whyrec/recbole_sasrec.py runs in it). RecBole needs numpy<2
# and pandas<3, which whyrec's .venv does not pin, so it gets its own venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-recbole
MARKER="$VENV/.whyrec-recbole-1.2.1"
if [ -f "$MARKER" ] && [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import recbole, torch" 2>/dev/null; then
  exit 0
fi
echo "creating $VENV with recbole==1.2.1 (~1-2 min)" >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first and pinned: on these machines 2.13.0 is a CPU build on local disk, while an unpinned
# torch (which recbole asks for) pulls a multi-GB CUDA build.
$PIP install -q --no-compile torch==2.13.0
# recbole 1.2.1 breaks on numpy 2 and pandas 3. Its ray dependency imports pkg_resources, which
# setuptools 81+ no longer ships, while torch 2.13.0 requires setuptools>=77.0.3 (so the older
# "setuptools<70" pin cannot be combined with it): 77-80 satisfies both. torch is repeated so pip
# keeps the CPU build.
$PIP install -q --no-compile torch==2.13.0 recbole==1.2.1 "numpy<2" "pandas<3" "setuptools>=77.0.3,<81" "scipy>=1.10"
"$VENV/bin/python" -c "import recbole, torch; from recbole.model.sequential_recommender import SASRec" >/dev/null
touch "$MARKER"
echo "RecBole ready in $VENV" >&2
