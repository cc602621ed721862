#!/usr/bin/env bash
# The test command: installs what it needs (scripts/setup_cpu.sh), then runs pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/parsers -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_cpu.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec python -m pytest -ra --durations=15 "$@"
