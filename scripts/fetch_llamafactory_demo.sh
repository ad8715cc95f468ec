#!/usr/bin/env bash
# Fetch LLaMA-Factory's dpo_en_demo.json: 300 English preference pairs in LLaMA-Factory's
# sharegpt format (`conversations` / `chosen` / `rejected`, some multi-turn). No human-labelled
# pairwise data set ships in a package registry; this one ships inside the *source*
# distribution of llamafactory 0.9.5 on PyPI (not its wheel), so pip can fetch it where the
# Hugging Face hub is unreachable. Load it with `format: sharegpt` (or `auto`).
#
# Usage: scripts/fetch_llamafactory_demo.sh [TARGET_DIR]
#   TARGET_DIR defaults to data/llamafactory/ under the project root. Prints the file's path.
#   Set FORCE=1 to fetch again when the file is already there; PYTHON to pick the interpreter.
# Needs: pip and network access to PyPI (pip builds the sdist's metadata with hatchling).
set -euo pipefail

VERSION=0.9.5
# sha256 of data/dpo_en_demo.json in llamafactory-0.9.5.tar.gz (checked, so a changed upload is noticed)
SHA256=b949be2421cfa62744afcf1b479f95b299d643d1a4c1c97d1341b314a1aa5cb3
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${1:-$ROOT/data/llamafactory}"
PY="${PYTHON:-python3}"
OUT_FILE="$TARGET/dpo_en_demo.json"

sha_of() { "$PY" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; }

if [[ -f "$OUT_FILE" && "${FORCE:-0}" != 1 ]]; then
    if [[ "$(sha_of "$OUT_FILE")" != "$SHA256" ]]; then
        echo "warning: $OUT_FILE differs from llamafactory $VERSION's copy (FORCE=1 refetches)" >&2
    fi
    echo "$(cd "$TARGET" && pwd)/dpo_en_demo.json"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading the llamafactory==$VERSION source distribution from PyPI ..." >&2
if ! "$PY" -m pip download --quiet --no-deps --no-binary :all: "llamafactory==$VERSION" -d "$tmp" >&2; then
    echo "error: pip could not download llamafactory==$VERSION (is PyPI reachable?)" >&2
    exit 1
fi
sdist="$tmp/llamafactory-$VERSION.tar.gz"
member="llamafactory-$VERSION/data/dpo_en_demo.json"
if ! tar -xzf "$sdist" -C "$tmp" "$member"; then
    echo "error: $member not found in $sdist" >&2
    exit 1
fi
got="$(sha_of "$tmp/$member")"
if [[ "$got" != "$SHA256" ]]; then
    echo "warning: sha256 $got differs from the expected $SHA256" >&2
fi
mkdir -p "$TARGET"
cp "$tmp/$member" "$OUT_FILE.tmp"
mv "$OUT_FILE.tmp" "$OUT_FILE"
echo "$(cd "$TARGET" && pwd)/dpo_en_demo.json"
