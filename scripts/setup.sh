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
# The report test renders report.html in a real browser: chromium's headless shell (a Debian
# package). Installed here when running as root on a Debian-like machine; elsewhere that test
# is skipped with the install command.
if ! command -v chromium-headless-shell >/dev/null && ! command -v chromium >/dev/null \
    && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium-headless-shell \
    || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
         chromium-headless-shell; }; } >/dev/null 2>&1 \
    || echo "warning: could not install chromium-headless-shell; the report's browser test will be skipped" >&2
fi
python -c "import harness, methods, torch; print('harness ready:', 'torch', torch.__version__, '| methods:', ', '.join(methods.available()))"
