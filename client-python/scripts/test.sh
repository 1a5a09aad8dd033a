#!/usr/bin/env bash
# Every check of the Python client, as CI runs them:
#
#   client-python/scripts/test.sh PYTHON
#
# PYTHON is the interpreter of a virtualenv that already has
# requirements-dev.txt and the package (./client-python) installed: this
# script installs nothing. The pytest suite starts the real agent, so
# target/debug/vaultlet (or $VAULTLET_BIN) must be built.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 PYTHON" >&2
    exit 2
fi
PYTHON=$1
# A path relative to the caller's directory must survive the `cd` below.
case $PYTHON in
    */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;;
esac
cd "$(dirname "$0")/.."

echo "== generated stubs match proto/"
"$PYTHON" scripts/generate.py --check

echo "== mypy --strict: package and examples, as Python 3.9 (pyproject.toml)"
"$PYTHON" -m mypy --strict

# pytest itself needs a newer Python than 3.9, so the tests are checked as the
# Python they run on.
echo "== mypy --strict: tests"
"$PYTHON" -m mypy --strict --python-version "$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" tests

echo "== pytest"
"$PYTHON" -m pytest tests
