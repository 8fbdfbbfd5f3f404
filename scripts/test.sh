#!/usr/bin/env bash
# The project's test command (README, CI): set up .venv, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The serving tests start a real tritonserver from .venv-serving (numpy<2, kept apart
# from .venv). Built here so a clean machine gets it up front; if it cannot be built
# (no package index), tests/test_serving.py retries once and skips its server tests.
bash scripts/setup_serving.sh || echo "warning: scripts/setup_serving.sh failed; the Triton serving tests will skip" >&2
. .venv/bin/activate
python -m pytest -q "$@"
