#!/usr/bin/env bash
# Run on the lent GPU machine: parity and speed of schedcmp vs diffusers on random weights from the real configs.
#   benchmarks/gpu_check.sh sd15    SD 1.5 at 512x512 fp16, with CUDA graphs (~4 min)
#   benchmarks/gpu_check.sh sdxl    SDXL base at 1024x1024 fp16 (~4 min)
#   benchmarks/gpu_check.sh         both, one after the other (run them as two calls where a call is capped at 10 min)
# Carried wheels (diffusers, which that machine lacks) are installed from .whl/ when present.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
out=${OUT:-out/gpu-check}
parts=${1:-sd15 sdxl}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for part in $parts; do
  case $part in
    sd15) timeout 280 python3 benchmarks/gpu_check.py --family sd15 --device cuda --dtype fp16 --size 512 \
            --repeats 2 --cuda-graphs --out "$out" ;;
    sdxl) timeout 280 python3 benchmarks/gpu_check.py --family sdxl --device cuda --dtype fp16 --size 1024 \
            --repeats 1 --out "$out" ;;
    *) echo "unknown part '$part'; use sd15 or sdxl" >&2; exit 2 ;;
  esac
done
