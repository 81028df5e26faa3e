#!/usr/bin/env bash
# The test command: makes sure what the tests need is installed (PostgreSQL server, llama-cpp-python
# server, pytest; a no-op when present), then runs the whole suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
exec python -m pytest "$@"
