#!/bin/bash
# Everything dfl measures on a CUDA machine, in one script that ends by its deadline.
#
#   make gpu-wheels                  # here, once: the wheels a bare GPU machine lacks -> .gpu/
#   bash benchmarks/gpu.sh           # there: BUDGET=510 (s), OUT=runs/gpu-out, STATE=runs/gpu
#
# On a machine with CUDA and PyTorch but nothing else (no network), it
#   1. installs the wheels brought along in .gpu/deps (optuna, pydantic, ...) into /tmp/site,
#      and points dfl at the embedded MNIST in .gpu/wheels;
#   2. smoke: trains one tiny run on the GPU (a broken setup stops here, in seconds);
#   3. tests: the GPU tests (`pytest -m gpu`, 8 at a time);
#   4. reproduce: times the default reproduction on cuda (`dfl reproduce`: the complete
#      profile) with the card to itself, for its target's 5 minutes (REPRODUCE_S=300; a run
#      of the script again continues it, its time on the clock adding up in reproduce.json);
#   5. many: R autoencoder runs side by side, as processes, fused into one model in one
#      process, and (--threads) as threads;
#   6. steps, profile: times the training step (benchmarks/gpu_step.py) and profiles it;
#   7. amp: the same reproduction in bf16, its numbers against fp32's (compare_runs.py);
#   8. full (only when PHASES names it): times the full profile (3 seeds behind every mean).
# CUDA MPS (kernels of several processes at once) is started before the first phase that runs
# processes side by side, where the machine has it; steps and profile run outside it. Each
# phase gets what is left of BUDGET. OUT/ receives gpu.txt (the machine, and each phase's
# exit and wall time), logs.tgz (every phase's log, the Markdown tables and their JSON),
# traces.tgz (the profiler's Chrome traces) and results.tgz (both reproductions' results.json,
# reproduce.json, report and each experiment's result.json): few files, as a device tool
# brings back at most eight.
#
# PHASES (default "smoke tests reproduce many steps profile amp") picks and orders the phases.
# Run it again and it continues: a phase that finished (STATE/done-PHASE) is skipped and the
# reproduction resumes from its checkpoints (on the same machine, or with STATE carried).
set -u
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${OUT:-runs/gpu-out}")
STATE=${STATE:-runs/gpu}
PY=${PY:-python3}
T_START=$(date +%s)
DEADLINE=$((T_START + ${BUDGET:-510}))
W=$STATE/out  # the phases' files, packed into OUT at the end (or when the script is stopped)
mkdir -p "$OUT" "$W"
pack() {
  cp "$W/gpu.txt" "$OUT/" 2>/dev/null
  (cd "$W" && tar czf "$OUT/logs.tgz" --exclude='trace-*' . 2>/dev/null)
  (cd "$W" && compgen -G "trace-*.json" > /dev/null && tar czf "$OUT/traces.tgz" trace-*.json)
  (cd "$STATE" && find complete complete-bf16 full -maxdepth 3 \( -name '*.json' -o -name '*.md' -o -name '*.html' -o -name '*.png' \
    \) -print0 2>/dev/null | tar czf "$OUT/results.tgz" --null -T - 2>/dev/null)
}
trap pack EXIT
log() { echo "$*" | tee -a "$W/gpu.txt"; }
left() { echo $((DEADLINE - $(date +%s))); }
PHASES=${PHASES:-smoke tests reproduce many steps profile amp}
wanted() { [[ " $PHASES " == *" $1 "* ]]; }
phase() {  # phase NAME SECONDS COMMAND...: run unless done, within SECONDS and the deadline
  local name=$1 want=$2 t0 rc limit
  shift 2
  if [ -e "$STATE/done-$name" ]; then log "$name: done earlier, skipped"; return 0; fi
  limit=$(left)
  [ "$want" -gt 0 ] && [ "$want" -lt "$limit" ] && limit=$want
  if [ "$limit" -lt 10 ]; then log "$name: no time left"; return 1; fi
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$W/$name.log" 2>&1
  rc=$?
  log "$name: rc=$rc in $(($(date +%s) - t0)) s (limit $limit s)"
  [ $rc = 0 ] && touch "$STATE/done-$name"
  return $rc
}

if compgen -G ".gpu/deps/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/deps/*.whl || exit 1
  export PYTHONPATH=$PWD/src:/tmp/site
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 DFL_WHEEL_DIR=$PWD/.gpu/wheels
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$W/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$W/gpu.txt"
log "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"

# one tiny run: the setup works
run_smoke() {
  phase smoke 90 $PY -m dfl train autoencoder --epochs 2 --device cuda --out "$STATE/smoke" \
    --set data.train_subset=2000 || { log "smoke run failed: see smoke.log"; exit 1; }
}

# CUDA MPS where the machine has it (kernels of several processes at once; it stays on), else
# processes side by side are time-sliced
start_mps() {
  [ -n "${MPS_TRIED:-}" ] && return 0
  MPS_TRIED=1
  if command -v nvidia-cuda-mps-control > /dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    pgrep -f nvidia-cuda-mps-control > /dev/null || nvidia-cuda-mps-control -d
    if $PY -c "import torch; torch.ones(1, device='cuda').sum().item()" 2>> "$W/gpu.txt"; then
      log "mps: on"
    else
      log "mps: started, but a CUDA process failed under it; stopped"
      echo quit | nvidia-cuda-mps-control
      unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    fi
  else
    log "mps: nvidia-cuda-mps-control not on this machine"
  fi
}

# R runs side by side: as processes, fused into one model, (--threads) as threads
run_many() {
  start_mps
  phase many 60 $PY benchmarks/gpu_step.py many --out "$W" --seconds 4
}

# reproduction NAME SECONDS DIR [OPTIONS...]: `dfl reproduce OPTIONS` on cuda into STATE/DIR
# as phase NAME, the card to itself, and what a timeout left running stopped
reproduction() {
  local name=$1 want=$2 run=$STATE/$3
  shift 3
  start_mps
  phase "$name" "$want" $PY -m dfl reproduce --device cuda --out "$run" \
    --jobs "${JOBS:-4}" --experiments-at-once "${AT_ONCE:-4}" "$@"
  pkill -9 -f "dfl.sweep"; pkill -9 -f "multiprocessing.spawn"; sleep 1  # left by a timeout
}

# on_the_clock NAME DIR: a reproduction's time on the clock over every invocation so far
on_the_clock() {
  $PY -c "import json; m = json.load(open('$STATE/$2/reproduce.json')); \
print('$1: on the clock', round(m['wall_s']), 's')" 2>/dev/null | tee -a "$W/gpu.txt"
}

# the default reproduction on the GPU (the complete profile)
run_reproduce() {
  local e
  reproduction reproduce "${REPRODUCE_S:-300}" complete
  for e in ae cnn sae vit conv attention; do
    $PY -c "import json; r = json.load(open('$STATE/complete/$e/result.json')); \
print('$e', r.get('status'), round(r.get('wall_s', 0)), 's', r.get('reason', ''))" \
      2>/dev/null | tee -a "$W/gpu.txt"
  done
  on_the_clock reproduce complete
}

# bf16 where the complete profile's numbers stay within the seeds' noise of fp32's: the same
# reproduction in bf16, every number beside fp32's (what `precision = "auto"` is read from)
run_amp() {
  if [ ! -e "$STATE/done-reproduce" ]; then
    log "amp: waits for the fp32 reproduction to finish (run the script again)"; return 0
  fi
  reproduction amp "${AMP_S:-0}" complete-bf16 --precision bf16
  [ -e "$STATE/done-amp" ] && $PY benchmarks/compare_runs.py "$STATE/complete" \
    "$STATE/complete-bf16" > "$W/amp.md" 2>> "$W/gpu.txt" && log "amp: fp32 against bf16 in amp.md"
}

# the full profile (3 seeds behind every mean), timed as the complete one
run_full() {
  reproduction full "${FULL_S:-0}" full --profile full
  on_the_clock full full
}

# the GPU tests, 8 at a time
run_tests() {
  phase tests 180 $PY -m pytest -q -m gpu -n 8 -p no:cacheprovider tests/test_gpu.py \
    ${TESTS_K:+-k "$TESTS_K"}
}

# the step: timings and the profiler's view, one process on the card as GPU.md measured them
# (not an MPS client, where an earlier phase started MPS)
NO_MPS=(env -u CUDA_MPS_PIPE_DIRECTORY -u CUDA_MPS_LOG_DIRECTORY)
run_steps() { phase steps 120 "${NO_MPS[@]}" $PY benchmarks/gpu_step.py steps --out "$W"; }
run_profile() { phase profile 40 "${NO_MPS[@]}" $PY benchmarks/gpu_step.py profile --out "$W"; }

for p in $PHASES; do "run_$p"; done
log "total $(($(date +%s) - T_START)) s"
