#!/usr/bin/env bash
# Issue 35's GPU measurements as one prepared call on a lent GPU machine (docs/BENCHMARK.md, "A GPU session").
#   here:   make gpu-wheels        # what the machine's image lacks (diffusers, pydantic...), as wheels
#   there:  bash benchmarks/gpu_session.sh   (the device tool's run, carry: [build/gpu_wheels], timeout_s 540)
# Results go to $OUT (the device tool brings them back) or build/gpu_session. Extra arguments go to
# bench_gpu_mfu.py; PYTHON picks the interpreter (default python3, the one that holds PyTorch there).
set -euo pipefail
py="${PYTHON:-python3}"
out="${OUT:-build/gpu_session}"
mkdir -p "$out"
if compgen -G "build/gpu_wheels/*.whl" > /dev/null; then
  "$py" -m pip install --quiet --no-index --no-deps --target build/gpu_site build/gpu_wheels/*.whl
fi
export PYTHONPATH="$PWD/src:$PWD/build/gpu_site${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true; } > "$out/gpu.txt" 2>&1
"$py" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" \
  | tee -a "$out/gpu.txt"
"$py" benchmarks/bench_gpu_mfu.py --out "$out/mfu" "$@" 2>&1 | tee "$out/mfu.log"
