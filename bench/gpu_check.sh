#!/bin/sh
# The GPU check to run once and send back (docs/gpus.md): no arguments needed.
#   bench/gpu_check.sh [--json_out=FILE] [--smoke]
# Runs bench/gpu_check.py with the project's .venv (make install GPU=1), or with $PYTHON when set.
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-"$REPO/.venv/bin/python"}
if [ ! -x "$PYTHON" ]; then
    echo "gpu_check: $PYTHON not found; run make install GPU=1 in $REPO first (or set PYTHON)" >&2
    exit 1
fi
exec "$PYTHON" "$REPO/bench/gpu_check.py" "$@"
