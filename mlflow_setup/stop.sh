#!/usr/bin/env sh
# Stop the MLflow tracking server started by start.sh, and its PostgreSQL if it has one (same --root,
# if one was given).
# Relative paths are taken from the current directory; the project's .venv is used when present.
set -e
REPO="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "$PYTHON" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m mlflow_setup.server stop "$@"
