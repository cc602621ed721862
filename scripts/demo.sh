#!/usr/bin/env bash
# The embedded default: install, write a tiny DeepSeek-V3 checkpoint, start the real vLLM
# OpenAI server with ds-plugin loaded, send one chat request, print the answer, stop.
# Extra arguments go to `ds-plugin demo` (see `ds-plugin demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_cpu.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec ds-plugin demo "$@"
