#!/usr/bin/env bash
# The GPU check in ONE call of the device tool, with no rerun: a task that draws a GPU has 15
# minutes of device time in all, the machine's start-up included, and a second start does not fit
# in it. So the script spends a fixed budget (540 s) on parts whose caps add up to it, the most
# wanted first:
#
#   device run:  command "bash scripts/gpu_check.sh"   carry [".whl"]   timeout_s 570
#
# Before it, here: `PY=/work/main/.venv/bin/python bash scripts/gpu_wheels.sh` rebuilds .whl/
# (ignored by git) with what the lent machine's image lacks (hydra-core, deepspeed, lightning, ...).
#   GPU_CHECK_DRY=1 bash scripts/gpu_check.sh     the order, the caps, the skips; runs nothing
#   GPU_CHECK_REHEARSE=1 OUT=/tmp/gpucheck_out PY=.venv/bin/python bash scripts/gpu_check.sh
#                      on a CPU: tiny sizes, the same code paths, no CUDA checks; caps, budget x 2
#   GPU_CHECK_PARTS="env target"    only these parts
#   GPU_CHECK_MISSING="deepspeed"   treat as not importable
#   GPU_CHECK_CAPS="giant=150"      other caps (the budget line then warns if they overrun it)
#
# Under $OUT (the device tool returns 8 files at most): report.md (every part's table as soon as
# it has one, the summary of exit codes and durations last; rewritten after every part, so a
# cut-off call still returns what it had), log.txt (everything printed, tracebacks in full),
# runs.tar.gz (the pretrain runs' metrics.csv, peak.json and configs, the one-row benchmark tables,
# the plan).
#
# Parts, in this order; each runs under its own cap (seconds) and never uses a later part's. A
# part marked + may also use what the parts before it left unused; compiled, last, has only that.
# A part that needs a package that does not import is skipped by name, as is one whose script is
# absent.
#   wheels 20      .whl/*.whl into /tmp/site (pip --no-deps --target); on failure one by one, the
#                  failures reported once
#   shm 5          /dev/shm checked (size, free, writable), mounted as a tmpfs if absent (root)
#   env 30         versions of every package the parts import, the GPU, bf16 matmul rate, copy
#                  bandwidth
#   sdpa 25        (b) the SDPA kernels of our attention, forward and backward; exit 1 on the math
#                  fallback
#   eager_transformers 40, eager_timm 40, eager_ours 50
#                  (a) benchmark_model.py SwinV2-B 192 px / window 12, bf16, batch 128, a process
#                  and a cap per row, the references first; MFU against 989 (datasheet) and the
#                  measured rate
#   plan 20        (d) SwinV2-G's memory plan at the largest batch (72 = its recipe's, or smaller)
#                  estimated under 85% of this GPU: the run measures a peak instead of failing OOM
#   giant 120 +    (d) pretrain model=swinv2_giant (ZeRO-3, bf16, activation checkpointing) 6 steps:
#                  img/s, peak memory (torch, NVML) against the plan; every thread's traceback 15 s
#                  before its limit
#   base 50        (c) pretrain model=swinv2_base (its recipe: normalised target on) 30 steps: img/s
#                  against (a)
#   target 25      the normalised target alone and in a SwinV2-B step, off and on (issue 17)
#   e2e 70         scripts/benchmark_e2e.py: ours against transformers' run_mim.py example
#                  (SwinV2-T, 1000 JPEGs, batch 64, 30 steps, 8 workers), each a whole command
#   eager_flex 35  (a) ours with FlexAttention, eager (its flex kernels compile cold in the process)
#   compiled 0 +   (a) torch.compile'd ours, transformers, timm, ours_flex: whatever time is left
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-python3}
PIP_PY=${PIP_PY:-$PY}
OUT=${OUT:-/tmp/gpucheck_out}
S=${GPU_CHECK_SCRATCH:-/tmp/gpucheck}     # scratch: section files, runs, the chosen batch
MD=$S/md
RUNS=$S/runs
REHEARSE=${GPU_CHECK_REHEARSE:-0}
DRY=${GPU_CHECK_DRY:-0}
BUDGET=540
RESERVE=10                                # the report, the archive and the gaps between parts
PARTS=${GPU_CHECK_PARTS:-all}
ORDER=(wheels shm env sdpa eager_transformers eager_timm eager_ours plan giant base target e2e
       eager_flex compiled)
declare -A CAP=([wheels]=20 [shm]=5 [env]=30 [sdpa]=25 [eager_transformers]=40 [eager_timm]=40
                [eager_ours]=50 [plan]=20 [giant]=120 [base]=50 [target]=25 [e2e]=70 [eager_flex]=35
                [compiled]=0)
SLACK=" giant compiled "                  # may use the time earlier parts left unused
for kv in ${GPU_CHECK_CAPS:-}; do CAP[${kv%%=*}]=${kv#*=}; done   # e.g. "giant=150 e2e=35"
# A rehearsal on 2 shared CPU cores runs slower than the lent machine: every cap and the budget x 2.
SCALE=${GPU_CHECK_SCALE:-$([ "$REHEARSE" = 1 ] && echo 2 || echo 1)}
for q in "${ORDER[@]}"; do CAP[$q]=$((CAP[$q] * SCALE)); done
BUDGET=$((BUDGET * SCALE)); RESERVE=$((RESERVE * SCALE))
TRAINING="hydra omegaconf lightning webdataset simplejpeg"
REFERENCES="timm transformers"            # benchmark_model.py gives every row transformers' weights
declare -A NEEDS=([sdpa]="timm" [eager_transformers]=$REFERENCES [eager_timm]=$REFERENCES
                  [eager_ours]=$REFERENCES [plan]=$TRAINING [giant]="$TRAINING deepspeed"
                  [base]=$TRAINING [target]="timm"
                  [e2e]="$TRAINING transformers datasets accelerate"
                  [eager_flex]=$REFERENCES [compiled]="$REFERENCES triton")
SECTIONS=(shm env sdpa eager giant base target e2e compiled)
MISSING=${GPU_CHECK_MISSING:-}
CUDA=unknown
export REHEARSE

if [ "$REHEARSE" = 1 ]; then
  export DS_ACCELERATOR=cpu
  MODEL=(--variant debug --img-size 64 --window 4 --batch 2 --precision fp32)
  STEPS=(--steps 2 --warmup 1); CSTEPS=(--steps 2 --warmup 2); COMPILED_IMPLS=ours
  TARGET=(--variant debug --img-size 64 --window 4 --batch 2 --precision fp32 --steps 2 --warmup 1
          --rounds 1)
  BASE=(model=swinv2_debug trainer=cpu img_size=64 batch_size=2 num_workers=0 model.window_size=4
        trainer.max_steps=3 callbacks.throughput.window_size=2 trainer.log_every_n_steps=1)
  # a small "GPU" for the plan, so that its batch search steps down as it would on an H100
  GIANT=(model=swinv2_giant model.variant=debug img_size=64 num_workers=0 model.window_size=4
         trainer.accelerator=cpu
         trainer.strategy._target_=simmim_swinv2.distributed.strategy.CPUDeepSpeedStrategy
         trainer.max_steps=3 callbacks.throughput.window_size=2 trainer.log_every_n_steps=1
         plan.gpu_memory_gb=2.0)
  E2E=(--images 12 --size 96x72 --img-size 64 --window 4 --batch-size 2 --steps 2 --workers 0
       --out "$MD/e2e.md")
else
  MODEL=(--variant base --img-size 192 --window 12 --batch 128 --precision bf16)
  STEPS=(--steps 20 --warmup 5); CSTEPS=(--steps 20 --warmup 3)
  COMPILED_IMPLS=ours,transformers,timm,ours_flex
  TARGET=(--variant base --img-size 192 --window 12 --batch 128 --precision bf16)
  BASE=(model=swinv2_base trainer=gpu trainer.max_steps=30 callbacks.throughput.window_size=10
        trainer.log_every_n_steps=5)
  GIANT=(model=swinv2_giant trainer.devices=1 trainer.max_steps=6 callbacks.throughput.window_size=3
         trainer.log_every_n_steps=1)
  # three whole commands (transformers' example, ours with the recipe, ours with equal settings)
  E2E=(--device cuda --precision bf16 --images 1000 --batch-size 64 --steps 30 --workers 8
       --out "$MD/e2e.md")
fi
SDPA=("${MODEL[@]}")
[ "$REHEARSE" = 1 ] || SDPA=(--variant base --img-size 192 --window 12 --batch 8 --precision bf16)
# Runs measure steps, not saves: no checkpoints (SwinV2-G's is ~40 GB), no pictures, no progress
# bar, no save on SIGTERM (the preemption callback's, which a part's timeout would trigger).
RUN=(data=synthetic resume=never trainer.enable_checkpointing=false
     trainer.enable_progress_bar=false trainer.enable_model_summary=false callbacks.checkpoint=null
     callbacks.checkpoint_time=null
     callbacks.checkpoint_keep=null callbacks.reconstructions=null callbacks.preemption=null)

# skip_reason NAME: why NAME will not run (nothing when it will), as far as is known now
skip_reason() {
  local name=$1 pkg f miss=()
  if [ "$PARTS" != all ] && [[ " $PARTS " != *" $name "* ]]; then
    echo "not in GPU_CHECK_PARTS"; return
  fi
  for pkg in ${NEEDS[$name]:-}; do [[ " $MISSING " == *" $pkg "* ]] && miss+=("$pkg"); done
  if ((${#miss[@]})); then echo "needs ${miss[*]}: not importable (see wheels and env)"; return; fi
  if [ "$name" = wheels ] && ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no .whl/*.whl (run scripts/gpu_wheels.sh here and carry .whl)"; return
  fi
  if [ "$name" = e2e ]; then
    if [ ! -f scripts/benchmark_e2e.py ]; then
      echo "scripts/benchmark_e2e.py is not in this checkout"; return
    fi
    for f in "${E2E[@]}"; do   # the flags this script passes: a renamed one skips, not fails
      if [[ $f == --* ]] && ! grep -q -- "\"$f\"" scripts/benchmark_e2e.py; then
        echo "scripts/benchmark_e2e.py has no $f (adapt E2E in this script)"; return
      fi
    done
  fi
  if [ "$name" = eager_flex ] && [ "$REHEARSE" = 1 ]; then
    echo "FlexAttention trains on CUDA only (a CPU rehearsal)"; return
  fi
  if [[ " wheels shm env " != *" $name "* ]] && [ "$CUDA" = 0 ] && [ "$REHEARSE" != 1 ]; then
    echo "no CUDA GPU: torch.cuda.is_available() is False (see env)"
  fi
}

# limit_of NAME: its cap (and for a + part what earlier parts left), never a later part's cap
limit_of() {
  local name=$1 later=0 after=0 q left cap=${CAP[$1]}
  left=$((BUDGET - RESERVE - (SECONDS - START)))
  for q in "${ORDER[@]}"; do
    ((after)) && [ -z "$(skip_reason "$q")" ] && later=$((later + CAP[$q]))
    [ "$q" = "$name" ] && after=1
  done
  local lim=$cap
  [[ $SLACK == *" $name "* ]] && ((left - later > cap)) && lim=$((left - later))
  echo $((lim < left ? lim : left))
}

declare -A LIMIT RC TOOK RESULT
# run_part NAME CMD...: CMD under NAME's limit, or skipped by name; its outcome recorded, reported
run_part() {
  local name=$1 why lim t0 rc; shift
  why=$(skip_reason "$name")
  lim=$(limit_of "$name")
  if [ -z "$why" ] && ((lim < 5)); then why="no time left (${lim}s)"; fi
  if [ -n "$why" ]; then
    echo "== $name: skipped: $why"; RESULT[$name]="skipped: $why"; report; return 0
  fi
  echo "== $name: up to ${lim}s (cap ${CAP[$name]}s; $((SECONDS - START))s in, $(date -u +%T)): $*"
  t0=$SECONDS
  # SIGTERM at lim - 3 s, SIGKILL 3 s later: the part never outlasts its limit
  GPU_CHECK_DUMP_AFTER=$((lim - 15)) timeout -k 3 $((lim - 3)) "$@"; rc=$?
  LIMIT[$name]=$lim; RC[$name]=$rc; TOOK[$name]=$((SECONDS - t0))
  case $rc in
    0) RESULT[$name]=ok;;
    124|137) RESULT[$name]="TIMED OUT at ${lim}s";;
    *) RESULT[$name]="FAILED (exit $rc)";;
  esac
  echo "== $name: exit $rc after ${TOOK[$name]}s: ${RESULT[$name]}"
  report
}

budget_table() {
  local q sum=0
  echo "| part | cap s | + | needs |"; echo "|---|---|---|---|"
  for q in "${ORDER[@]}"; do
    sum=$((sum + CAP[$q]))
    echo "| $q | ${CAP[$q]} | $([[ $SLACK == *" $q "* ]] && echo +) | ${NEEDS[$q]:-} |"
  done
  local warn=""
  ((sum + RESERVE == BUDGET)) || warn=": WARNING, not equal (later parts get less)"
  echo "| caps + reserve | $((sum + RESERVE)) of the ${BUDGET} s budget$warn | | |"
}

summary_table() {
  local q
  echo "### summary: $((SECONDS - START)) s of the ${BUDGET} s budget"; echo
  echo "| part | cap s | limit s | exit | took s | result |"; echo "|---|---|---|---|---|---|"
  for q in "${ORDER[@]}"; do
    echo "| $q | ${CAP[$q]} | ${LIMIT[$q]:--} | ${RC[$q]:--} | ${TOOK[$q]:--} |" \
         "${RESULT[$q]:-not reached} |"
  done
}

# report: $OUT/report.md (sections so far, the summary) and $OUT/runs.tar.gz, after every part
report() {
  { echo "# GPU check, $(date -u +%FT%TZ), ${HOSTNAME:-?}, rehearsal=$REHEARSE"
    local s; for s in "${SECTIONS[@]}"; do [ -s "$MD/$s.md" ] && { echo; cat "$MD/$s.md"; }; done
    echo; summary_table; } >"$S/report.md"
  cp -f "$S/report.md" "$OUT/report.md"
  tar -czf "$S/runs.tar.gz" -C "$S" --exclude='*.ckpt' --exclude='*.pt' --exclude=site312 \
    --exclude=report.md --exclude=runs.tar.gz . 2>/dev/null &&
    cp -f "$S/runs.tar.gz" "$OUT/runs.tar.gz"
}

# install_wheels DIR PIP_ARGS...: all of .whl at once; on failure one by one, failures named once
install_wheels() {
  local dir=$1 w failed=(); shift
  local pip=("$PIP_PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
             --target "$dir" "$@")
  if "${pip[@]}" .whl/*.whl; then
    echo "wheels: $(ls .whl/*.whl | wc -l) installed into $dir"; return 0
  fi
  echo "wheels: installing them together failed (above); one by one:"
  for w in .whl/*.whl; do "${pip[@]}" "$w" >/dev/null 2>&1 || failed+=("$(basename "$w")"); done
  if ((${#failed[@]})); then
    echo "wheels: INSTALL FAILED for ${failed[*]}; the parts that need them are skipped by name"
  else
    echo "wheels: each installed alone (two versions of a package? the later one stays): see env"
  fi
  return 1
}

# shm_setup FILE: /dev/shm (loader workers, NCCL) checked; mounted if absent (root, not rehearsing)
shm_setup() {
  local file=$1 mount="" action="none" writable=no
  local dev mnt type opts rest
  while read -r dev mnt type opts rest; do   # the last line for /dev/shm is the mount on top
    [ "$mnt" = /dev/shm ] && mount="$dev $type $opts"
  done </proc/mounts
  if [ -z "$mount" ]; then
    if [ "$REHEARSE" = 1 ]; then action="absent; a rehearsal mounts nothing"
    elif [ "$(id -u)" = 0 ]; then
      mkdir -p /dev/shm && mount -t tmpfs -o size=50%,mode=1777 tmpfs /dev/shm &&
        action="absent: mounted a tmpfs, size=50% of RAM" || action="absent: MOUNT FAILED"
    else action="absent, and not root: cannot mount (loader workers may fail)"; fi
  elif (($(df -k --output=size /dev/shm | tail -1) < 1048576)) && [ "$REHEARSE" != 1 ] &&
       [ "$(id -u)" = 0 ]; then
    mount -o remount,size=50% /dev/shm && action="under 1 GiB: remounted at 50% of RAM" ||
      action="under 1 GiB: REMOUNT FAILED"
  fi
  touch /dev/shm/gpucheck_probe 2>/dev/null && rm -f /dev/shm/gpucheck_probe && writable=yes
  { echo "### /dev/shm"; echo; echo "| item | value |"; echo "|---|---|"
    echo "| mount (/proc/mounts) | ${mount:-none} |"; echo "| action | $action |"
    echo "| size, free | $(echo $(df -h --output=size,avail /dev/shm 2>/dev/null | tail -1)) |"
    echo "| writable | $writable |"; } | tee "$file"
  [ "$writable" = yes ]
}
export -f install_wheels shm_setup
export PIP_PY

if [ "$DRY" = 1 ]; then
  echo "gpu_check: dry run, budget ${BUDGET}s, rehearsal=$REHEARSE, parts: $PARTS," \
       "missing: ${MISSING:-none}"
  budget_table
  START=$SECONDS
  for q in "${ORDER[@]}"; do why=$(skip_reason "$q"); echo "$q: ${why:+skipped: }${why:-runs}"; done
  exit 0
fi

# eager_table ROWS...: the eager rows so far as one table (the report's eager section)
eager_table() {
  "$PY" scripts/gpu_check_parts.py eager-table --peak-tflops "$peaks" --out "$MD/eager.md" "$@" \
    >/dev/null
}

main() {
  START=$SECONDS
  echo "gpu_check: $(date -u +%FT%TZ) rehearsal=$REHEARSE budget=${BUDGET}s parts: $PARTS;" \
       "one call, no rerun"
  budget_table
  export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 HYDRA_FULL_ERROR=1 TOKENIZERS_PARALLELISM=false
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
  export HF_HOME=$S/hf SIMMIM_OUTPUT_ROOT=$RUNS
  export MASTER_PORT=${MASTER_PORT:-$((20000 + RANDOM % 20000))}  # not one another job holds
  local site=/tmp/site
  if [ "$REHEARSE" = 1 ]; then   # installed for CPython 3.12 (the lent machine's), not imported
    site=$S/site312
    run_part wheels bash -c 'install_wheels "$@"' _ "$site" --python-version 3.12 \
      --only-binary=:all:
    export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}
  else
    run_part wheels bash -c 'install_wheels "$@"' _ "$site"
    export PYTHONPATH=$REPO/src:$site${PYTHONPATH:+:$PYTHONPATH}
  fi
  run_part shm bash -c 'shm_setup "$@"' _ "$MD/shm.md"
  run_part env "$PY" scripts/gpu_check_parts.py env --out "$MD/env.md" --missing "$S/missing.txt" \
    --cuda-file "$S/cuda.txt" --rate-file "$S/rate.txt"
  MISSING=$(echo $MISSING $(cat "$S/missing.txt" 2>/dev/null))
  CUDA=$(cat "$S/cuda.txt" 2>/dev/null || echo 0)
  peaks="989,$(cat "$S/rate.txt" 2>/dev/null || echo 790)"
  local q why
  echo "gpu_check: not importable: $(echo ${MISSING:-none}); CUDA $CUDA; from here:"
  for q in "${ORDER[@]:3}"; do
    why=$(skip_reason "$q"); echo "  $q: ${why:+skipped: }${why:-runs}"
  done

  run_part sdpa "$PY" -X faulthandler scripts/sdpa_backend.py "${SDPA[@]}" --out "$MD/sdpa.md"

  local impl rows=()   # (a) one process and one cap per row, the references first
  for impl in transformers timm ours; do
    local extra=(); [ "$impl" = ours ] && extra=(--mfu --peak-tflops "$peaks")
    run_part "eager_$impl" "$PY" -X faulthandler scripts/benchmark_model.py "${MODEL[@]}" \
      --impls "$impl" --rounds 1 "${STEPS[@]}" "${extra[@]}" --out "$S/eager_$impl.md"
    rows+=("$S/eager_$impl.md")
    eager_table "${rows[@]}"
  done

  # (d) SwinV2-G, the least known part, before SwinV2-B: the plan picks the batch, then the run
  run_part plan "$PY" -X faulthandler scripts/gpu_check_parts.py plan --out "$S/plan.md" \
    --run-dir "$RUNS/plan" --batch-file "$S/giant_batch" "${GIANT[@]}" data=synthetic
  local batch=(); [ -s "$S/giant_batch" ] && batch=("batch_size=$(cat "$S/giant_batch")")
  run_part giant "$PY" -X faulthandler scripts/gpu_check_parts.py pretrain --dir "$RUNS/giant" \
    "${GIANT[@]}" "${batch[@]}" "${RUN[@]}"
  { cat "$S/plan.md" 2>/dev/null; echo
    "$PY" scripts/gpu_check_parts.py run-table --dir "$RUNS/giant" \
      --title "pretrain ${GIANT[*]} ${batch[*]}" --plan "$S/plan.md"; } >"$MD/giant.md"

  # (c) SwinV2-B end to end
  run_part base "$PY" -X faulthandler scripts/gpu_check_parts.py pretrain --dir "$RUNS/base" \
    "${BASE[@]}" "${RUN[@]}"
  "$PY" scripts/gpu_check_parts.py run-table --dir "$RUNS/base" --title "pretrain ${BASE[*]}" \
    --eager "$MD/eager.md" --out "$MD/base.md" >/dev/null

  run_part target "$PY" -X faulthandler scripts/gpu_check_parts.py target "${TARGET[@]}" \
    --out "$MD/target.md"
  run_part e2e "$PY" -X faulthandler scripts/benchmark_e2e.py "${E2E[@]}"

  run_part eager_flex "$PY" -X faulthandler scripts/benchmark_model.py "${MODEL[@]}" \
    --impls ours_flex --rounds 1 "${STEPS[@]}" --out "$S/eager_ours_flex.md"
  [ -f "$S/eager_ours_flex.md" ] && rows+=("$S/eager_ours_flex.md")
  eager_table "${rows[@]}"

  run_part compiled "$PY" -X faulthandler scripts/benchmark_model.py "${MODEL[@]}" \
    --impls "$COMPILED_IMPLS" --rounds 1 "${CSTEPS[@]}" --compile-only --out "$S/compiled.md"
  if [ -s "$S/compiled.md" ]; then
    { echo "### model step, torch.compile (a process per row, cold compiles)"; echo
      cat "$S/compiled.md"; } >"$MD/compiled.md"
  fi
  report
  echo; echo "gpu_check: done after $((SECONDS - START))s"; echo; cat "$OUT/report.md"
  local failed=0
  for q in "${ORDER[@]}"; do
    [[ ${RESULT[$q]:-} == ok || ${RESULT[$q]:-} == skipped* ]] || failed=1
  done
  return $failed
}

rm -rf "$S"; mkdir -p "$OUT" "$MD" "$RUNS"
main 2>&1 | tee "$OUT/log.txt"   # a pipeline: bash waits for tee, so log.txt is complete
exit "${PIPESTATUS[0]}"
