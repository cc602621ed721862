#!/usr/bin/env bash
# One call on the lent H200 (see ../.library/device): install the carried peer wheels, then run
# each argument as one step, timing it and keeping its output, and pack everything for the way
# back. Usage (device command line): bash scripts/h200_run.sh "python -m pytest tests/kernels -q" ...
# Needs: $OUT (set by the device tool), .whl/ carried (FlashInfer 0.7.2.post1 + apache-tvm-ffi).
set -u
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
mkdir -p /tmp/logs
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >/tmp/logs/00-wheels.txt 2>&1 || echo "wheel install failed"
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
  >/tmp/logs/00-machine.txt 2>&1
i=0
for step in "$@"; do
  i=$((i + 1))
  log=$(printf '/tmp/logs/%02d.txt' "$i")
  echo "\$ $step" >"$log"
  start=$(date +%s)
  bash -c "$step" >>"$log" 2>&1
  rc=$?
  echo "[step $i] rc=$rc ${SECONDS}s total, $(( $(date +%s) - start ))s: $step" | tee -a "$log"
  tail -n 25 "$log" | grep -v '^\$ ' | sed "s/^/  [$i] /"
done
cp -r benchmarks/results /tmp/logs/results 2>/dev/null
tar -czf "$OUT/h200-logs.tgz" -C /tmp logs
echo "packed $(du -h "$OUT/h200-logs.tgz" | cut -f1) to \$OUT/h200-logs.tgz"
