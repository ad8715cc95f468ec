#!/usr/bin/env bash
# Create .venv and install the harness with every extra, from the project's own pins.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade "pip>=24" >/dev/null
# torch first and exactly pinned: a looser spec pulls a multi-GB CUDA build on CPU machines
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[all,semantic]"
python -c "import harness, methods, torch; print('harness ready:', 'torch', torch.__version__, '| methods:', ', '.join(methods.available()))"
