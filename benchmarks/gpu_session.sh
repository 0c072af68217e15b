#!/usr/bin/env bash
# Issue 35's GPU measurements as prepared calls on a lent GPU machine (docs/BENCHMARK.md, "A GPU session").
#   here:   make gpu-wheels        # what the machine's image lacks (diffusers, pydantic...), as wheels
#           build/released_sdft    # the released SDFT code, for the "released" part (docs/BENCHMARK.md)
#   there:  bash benchmarks/gpu_session.sh [PART ...]   (the device tool's run, carry: [build/gpu_wheels,
#           build/released_sdft], timeout_s 540); PART: mfu, released (default: both)
# Results go to $OUT (the device tool brings them back) or build/gpu_session, one folder per part.
# PYTHON picks the interpreter (default python3, the one that holds PyTorch there); MFU_ARGS and
# RELEASED_ARGS add arguments to each part's script.
set -uo pipefail
py="${PYTHON:-python3}"
out="${OUT:-build/gpu_session}"
if [ $# -gt 0 ]; then parts=("$@"); else parts=(mfu released); fi
mkdir -p "$out"
if compgen -G "build/gpu_wheels/*.whl" > /dev/null; then
  "$py" -m pip install --quiet --no-index --no-deps --target build/gpu_site build/gpu_wheels/*.whl
fi
export PYTHONPATH="$PWD/src:$PWD/build/gpu_site${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true; } > "$out/gpu.txt" 2>&1
"$py" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" \
  | tee -a "$out/gpu.txt"
status=0
for part in "${parts[@]}"; do
  start=$(date +%s)
  case "$part" in
    mfu)  # training-step MFU, the speed settings one at a time (bench_gpu_mfu.py)
      "$py" benchmarks/bench_gpu_mfu.py --out "$out/mfu" --budget-s 240 ${MFU_ARGS:-} 2>&1 | tee "$out/mfu.log" ;;
    released)  # the released SDFT loop (fp16) against the project's step at 256 px, batch 8
      mkdir -p "$out/released"
      "$py" benchmarks/bench_released.py --released build/released_sdft --device cuda --preset ffhq_p2 \
        --batch 8 --warmup 3 --repeats 10 --project-settings bf16 channels_last fused_adamw tf32 \
        ${RELEASED_ARGS:-} 2>&1 | tee "$out/released/results.txt" ;;
    *) echo "unknown part: $part (mfu, released)"; status=2; continue ;;
  esac
  rc=${PIPESTATUS[0]}
  echo "part $part: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$out/gpu.txt"
  [ "$rc" -ne 0 ] && status=$rc
done
exit $status
