#!/usr/bin/env sh
# Start the local MLflow tracking server and print its URI; options go to
# `python -m mlflow_setup.server start` (--root, --host, --port, --postgres, --backend-store-uri, ...).
# Relative paths are taken from the current directory; the project's .venv is used when present.
set -e
REPO="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "$PYTHON" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m mlflow_setup.server start "$@"
