#!/usr/bin/env bash
# Issue 35's GPU measurements as prepared calls on a lent GPU machine (docs/BENCHMARK.md, "A GPU session").
#   here:   make gpu-wheels        # what the machine's image lacks (diffusers, pydantic...), as wheels
#           build/released_sdft    # the released SDFT code, for the "released" part (docs/BENCHMARK.md)
#   there:  bash benchmarks/gpu_session.sh [PART ...]   (the device tool's run, carry: [build/gpu_wheels,
#           build/released_sdft], timeout_s 540); PART: released, mfu, paper (default: released mfu; paper,
#           several minutes, in a call of its own)
# Results go to $OUT (the device tool brings them back) or build/gpu_session, one folder per part.
# PYTHON picks the interpreter (default python3, the one that holds PyTorch there); MFU_ARGS,
# RELEASED_ARGS and PAPER_ARGS add arguments to each part's script.
set -uo pipefail
py="${PYTHON:-python3}"
out="${OUT:-build/gpu_session}"
if [ $# -gt 0 ]; then parts=("$@"); else parts=(released mfu); fi
mkdir -p "$out"
if compgen -G "build/gpu_wheels/*.whl" > /dev/null; then
  "$py" -m pip install --quiet --no-index --no-deps --target build/gpu_site build/gpu_wheels/*.whl
fi
export PYTHONPATH="$PWD/src:$PWD/build/gpu_site${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true; } > "$out/gpu.txt" 2>&1
"$py" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" \
  | tee -a "$out/gpu.txt"
run_part() {  # one part's script, its output also in $out/<part>.log; returns the script's status
  case "$1" in
    released)  # the released SDFT loop (fp16) against the project's step at 256 px, batch 8
      "$py" benchmarks/bench_released.py --released build/released_sdft --device cuda --preset ffhq_p2 \
        --batch 8 --warmup 3 --repeats 10 --project-settings bf16 channels_last fused_adamw tf32 ${RELEASED_ARGS:-} ;;
    mfu)  # training-step MFU, the speed settings one at a time (bench_gpu_mfu.py)
      "$py" benchmarks/bench_gpu_mfu.py --out "$out/mfu" --budget-s 240 ${MFU_ARGS:-} ;;
    paper)  # kedro run --env=paper --pipeline=sdft_aahq at 256 px on stand-ins, each node's wall and memory
      "$py" benchmarks/paper_rehearsal.py --out "$out/paper" ${PAPER_ARGS:-}
      local rc=$?
      rm -rf "$out/paper/project"  # the copy with its stand-in weights and outputs: not worth bringing back
      return $rc ;;
    *) echo "unknown part: $1 (released, mfu, paper)"; return 2 ;;
  esac
}
status=0
for part in "${parts[@]}"; do
  start=$(date +%s)
  run_part "$part" 2>&1 | tee "$out/$part.log"
  rc=${PIPESTATUS[0]}
  echo "part $part: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$out/gpu.txt"
  [ "$rc" -ne 0 ] && status=$rc
done
exit $status
