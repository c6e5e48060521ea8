#!/usr/bin/env bash
# Run on the lent GPU machine: parity and speed of schedcmp vs diffusers on random weights from the real configs.
#   benchmarks/gpu_check.sh sd15    SD 1.5 at 512x512 fp16, with CUDA graphs (~4 min)
#   benchmarks/gpu_check.sh sdxl    SDXL base at 1024x1024 fp16 (~4 min)
#   benchmarks/gpu_check.sh ranks   a sweep over one rank per GPU against one process (needs 2+ GPUs; ~2 min)
#   benchmarks/gpu_check.sh         sd15 and sdxl, one after the other (run them as two calls where a call is capped)
# Carried wheels (diffusers, which that machine lacks) are installed from .whl/ when present.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
out=${OUT:-out/gpu-check}
mkdir -p "$out"
parts=${1:-sd15 sdxl}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for part in $parts; do
  case $part in
    sd15) timeout 280 python3 benchmarks/gpu_check.py --family sd15 --device cuda --dtype fp16 --size 512 \
            --repeats 2 --cuda-graphs --out "$out" ;;
    sdxl) timeout 280 python3 benchmarks/gpu_check.py --family sdxl --device cuda --dtype fp16 --size 1024 \
            --repeats 1 --out "$out" ;;
    ranks) gpus=$(nvidia-smi -L | wc -l)
           if [ "$gpus" -lt 2 ]; then echo "ranks: $gpus GPU here; the sweep over ranks needs two or more"; continue; fi
           timeout 280 python3 benchmarks/distributed.py --ranks "$gpus" --plans shapes --repeats 1 --device cuda \
             | tee "$out/ranks.txt" ;;
    *) echo "unknown part '$part'; use sd15, sdxl or ranks" >&2; exit 2 ;;
  esac
done
