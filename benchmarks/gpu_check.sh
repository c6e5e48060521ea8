#!/usr/bin/env bash
# Run on the lent GPU machine: parity and speed of schedcmp vs diffusers on SD 1.5-shaped random weights.
# Carried wheels (diffusers, which that machine lacks) are installed from .whl/ when present.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
out=${OUT:-out/gpu-check}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 540 python3 benchmarks/gpu_check.py --device cuda --dtype fp16 --size 512 --repeats 2 --cuda-graphs \
  --out "$out" "$@"
