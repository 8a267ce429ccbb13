#!/usr/bin/env bash
# Run the model tests against the oldest torch that pyproject.toml allows.
#
# Reads the lower bound from the `torch>=X.Y` line of pyproject.toml, installs exactly
# torch==X.Y.0 (PyPI's Linux wheel: it pulls several GB of nvidia-* CUDA wheels, which is
# fine on a CPU-only machine; the tests run on CPU) plus this checkout with its test
# extras into a separate, throw-away virtual environment, and runs the tests that load
# and convert models (classifier conversion, ESM-2, DNABERT-S, embedding, CLI).
#
# NOT part of CI (it downloads ~3-4 GB and takes minutes): run it by hand when the
# torch lower bound, the containers' torch pin or the model code changes.
#
#   containers/check_torch_lower_bound.sh            # venv in /tmp/venv-torch211 (for >=2.11)
#   VENV=/some/dir PYTHON=python3.11 containers/check_torch_lower_bound.sh
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

bound="$(sed -nE 's/^[[:space:]]*"torch>=([0-9]+(\.[0-9]+)*)".*/\1/p' "$REPO/pyproject.toml")"
if [[ -z "$bound" ]]; then
    echo "no \"torch>=X.Y\" line in $REPO/pyproject.toml" >&2
    exit 2
fi
# torch>=2.11 -> torch==2.11.0
version="$bound"
[[ "$version" =~ ^[0-9]+\.[0-9]+$ ]] && version="$version.0"
VENV="${VENV:-/tmp/venv-torch${bound//./}}"

echo "torch lower bound: $bound -> torch==$version; venv: $VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install "torch==$version" -e "$REPO[test]"
"$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'

cd "$REPO"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_classifier.py tests/test_esm2.py tests/test_dnabert.py \
    tests/test_embed.py tests/test_cli.py "$@"
