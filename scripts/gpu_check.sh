#!/usr/bin/env bash
# The GPU check (issue 12) in one call of the device tool, at most 9 minutes, its tables under $OUT:
#
#   device run:  command "bash scripts/gpu_check.sh"   carry [".whl"]   timeout_s 560
#
# Before it, here: `PY=/work/main/.venv/bin/python bash scripts/gpu_wheels.sh` fills .whl/ (git-ignored) with what the
# lent machine's image lacks (hydra-core, omegaconf, webdataset, simplejpeg, deepspeed, ...; ~9 MB). A second call
# can rerun single parts: GPU_CHECK_PARTS="giant compiled" bash scripts/gpu_check.sh
# Rehearsal on a CPU, tiny sizes (debug model, 64 px, batch 2, 2-3 steps), the same code paths otherwise:
#   GPU_CHECK_TINY=1 OUT=/tmp/gpucheck_out PY=/work/main/.venv/bin/python bash scripts/gpu_check.sh
#
# Parts, in this order, each under its own timeout (GPU_CHECK_BUDGET seconds in all, 540 by default, shared out as it
# goes), each writing its markdown under $OUT as soon as it has numbers, none stopping the others:
#   env.md             machine and versions; measured bf16 matrix rate (the MFU ceiling) and copy bandwidth
#   sdpa.md            (b) the SDPA kernels of our attention, forward and backward; exit 1 on the math fallback
#   model_eager.md     (a) benchmark_model.py, SwinV2-B 192 px / window 12, bf16, batch 128: ours, ours_flex,
#                          transformers, timm; img/s, peak memory, MFU against 989 (datasheet) and the measured rate
#   pretrain_base.md   (c) pretrain model=swinv2_base data=synthetic trainer=gpu, 30 steps: end-to-end img/s vs (a)
#   giant.md           (d) plan, then pretrain model=swinv2_giant data=synthetic (its recipe: ZeRO-3, bf16,
#                          activation checkpointing, batch 72), 6 steps: img/s, peak GPU memory vs the plan
#   model_compiled.md  (a) under torch.compile, with the time left (cold compiles take minutes each)
#   log.txt            everything printed
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpucheck_out}
TINY=${GPU_CHECK_TINY:-0}
BUDGET=${GPU_CHECK_BUDGET:-540}
PARTS=${GPU_CHECK_PARTS:-"env sdpa eager base giant compiled"}
RUNS=/tmp/gpucheck_runs
START=$SECONDS
mkdir -p "$OUT" "$RUNS"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 SIMMIM_OUTPUT_ROOT=$RUNS WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
export MASTER_PORT=${MASTER_PORT:-$((20000 + RANDOM % 20000))}   # not a port another job's process group holds
echo "gpu_check: $(date -u +%FT%TZ) tiny=$TINY budget=${BUDGET}s parts: $PARTS"

# --- wheels -> /tmp/site (the device README's recipe); rehearsal: installed for Python 3.12 but not imported
if ls .whl/*.whl >/dev/null 2>&1; then
  if [ "$TINY" = 1 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpucheck_site \
      --python-version 3.12 --only-binary=:all: .whl/*.whl && echo "wheels: install for 3.12 OK (not imported here)"
    export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}
  else
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || echo "wheels: INSTALL FAILED"
    export PYTHONPATH=$REPO/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
else
  echo "wheels: none in .whl/ (run scripts/gpu_wheels.sh and carry .whl): hydra/webdataset/deepspeed parts will fail"
  export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}
fi

if [ "$TINY" = 1 ]; then
  export DS_ACCELERATOR=cpu
  MODEL=(--variant debug --img-size 64 --window 4 --batch 2 --precision fp32)
  EAGER_IMPLS=ours,transformers,timm; COMPILED_IMPLS=ours; STEPS=(--steps 2 --warmup 1); CSTEPS=(--steps 2 --warmup 2)
  SDPA=(--variant debug --img-size 64 --window 4 --batch 2 --precision fp32)
  BASE=(model=swinv2_debug trainer=cpu img_size=64 batch_size=2 num_workers=0 model.window_size=4 trainer.max_steps=3
        callbacks.throughput.window_size=2 trainer.log_every_n_steps=1)
  GIANT=(model=swinv2_giant model.variant=debug img_size=64 batch_size=2 num_workers=0 model.window_size=4
         trainer.accelerator=cpu trainer.strategy._target_=simmim_swinv2.distributed.strategy.CPUDeepSpeedStrategy
         trainer.max_steps=3 callbacks.throughput.window_size=2 trainer.log_every_n_steps=1 plan.gpu_memory_gb=139)
else
  MODEL=(--variant base --img-size 192 --window 12 --batch 128 --precision bf16)
  EAGER_IMPLS=ours,ours_flex,transformers,timm; COMPILED_IMPLS=ours,transformers,timm,ours_flex
  STEPS=(--steps 20 --warmup 5); CSTEPS=(--steps 20 --warmup 3)
  SDPA=(--variant base --img-size 192 --window 12 --batch 8 --precision bf16)
  BASE=(model=swinv2_base trainer=gpu trainer.max_steps=30 callbacks.throughput.window_size=10 trainer.log_every_n_steps=5)
  GIANT=(model=swinv2_giant trainer.devices=1 trainer.max_steps=6 callbacks.throughput.window_size=3
         trainer.log_every_n_steps=1)
fi
# Runs measure steps, not saves: no checkpoints (SwinV2-G's is ~40 GB), no pictures, no progress bar, and no save on
# SIGTERM (the preemption callback's, which a part's timeout would trigger).
RUN=(data=synthetic resume=never trainer.enable_checkpointing=false trainer.enable_progress_bar=false
     trainer.enable_model_summary=false callbacks.checkpoint=null callbacks.checkpoint_time=null
     callbacks.checkpoint_keep=null callbacks.reconstructions=null callbacks.preemption=null)

want() { [[ " $PARTS " == *" $1 "* ]]; }

# part NAME FILE CAP CMD...: CMD under a timeout of min(CAP, what the budget has left); its outcome noted in FILE
part() {
  local name=$1 file=$2 cap=$3; shift 3
  local left=$((BUDGET - (SECONDS - START) - 10)) t0=$SECONDS rc
  local t=$((cap < left ? cap : left))
  if ((t < 30)); then
    echo "== $name: skipped, ${left}s left"; printf '\n%s: skipped (%ss of the budget left)\n' "$name" "$left" >>"$file"
    return 0
  fi
  echo "== $name: up to ${t}s ($(date -u +%T), $((SECONDS - START))s in)"
  timeout -k 15 "$t" "$@"; rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0))s"
  if ((rc == 124 || rc == 137)); then printf '\n%s: timed out after %ss (the numbers above are what it had)\n' "$name" "$t" >>"$file"
  elif ((rc != 0)); then printf '\n%s: exit code %s (log.txt has the output)\n' "$name" "$rc" >>"$file"; fi
  return 0
}

# pretrain_run DIR OVERRIDES...: `python -m simmim_swinv2.pretrain` with peak memory reported at exit, nvidia-smi's
# memory.used sampled every second (the whole process: context and allocator cache included), output in DIR/out.txt.
# (A function run under `timeout` through `bash -c`, hence exported.)
pretrain_run() {
  local dir=$1; shift
  rm -rf "$dir"; mkdir -p "$dir"
  local smi="" t0=$SECONDS
  if command -v nvidia-smi >/dev/null && [ "$TINY" != 1 ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 1000 >"$dir/smi.txt" 2>/dev/null & smi=$!
  fi
  "$PY" - "$@" "hydra.run.dir=$dir" <<'EOF' 2>&1 | tee "$dir/out.txt"
import atexit, resource, runpy, sys
import torch

def report():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        print(f"PEAK allocated={torch.cuda.max_memory_allocated() / 2**30:.2f} GiB "
              f"reserved={torch.cuda.max_memory_reserved() / 2**30:.2f} GiB", flush=True)
    print(f"PEAK rss={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB", flush=True)

atexit.register(report)
sys.argv = ["simmim_swinv2.pretrain", *sys.argv[1:]]
runpy.run_module("simmim_swinv2.pretrain", run_name="__main__")
EOF
  local rc=${PIPESTATUS[0]}
  echo "WALL $((SECONDS - t0)) s" | tee -a "$dir/out.txt"
  [ -n "$smi" ] && kill "$smi" 2>/dev/null
  return "$rc"
}
export -f pretrain_run
export PY TINY

# run_table TITLE DIR EAGER_MD PLAN_MD: the markdown table of a pretrain run, from its metrics.csv and out.txt, set
# against benchmark_model's eager img/s and the plan's memory estimate where those files exist
run_table() {
  "$PY" - "$@" <<'EOF'
import csv, re, statistics, sys
from pathlib import Path
title, run = sys.argv[1], Path(sys.argv[2])
log = (run / "out.txt").read_text(errors="replace") if (run / "out.txt").exists() else ""
eager, plan = Path(sys.argv[3]), Path(sys.argv[4])
rows = list(csv.DictReader(open(run / "metrics.csv"))) if (run / "metrics.csv").exists() else []
def col(suffix):
    keys = [k for k in (rows[0] if rows else {}) if k.endswith(suffix)]
    return [float(r[k]) for r in rows for k in keys[:1] if r.get(k)]
ips, steps, loss = col("device/samples_per_sec"), col("step"), col("train/loss_step")
peak = dict(re.findall(r"(\w+)=([\d.]+) GiB", " ".join(l for l in log.splitlines() if l.startswith("PEAK"))))
smi = [float(x) for x in (run / "smi.txt").read_text().split()] if (run / "smi.txt").exists() else []
wall = re.findall(r"WALL ([\d.]+) s", log)
print(f"### {title}\n")
print("| item | value |\n|---|---|")
print(f"| steps logged | {int(max(steps)) + 1 if steps else 0} |")
print(f"| img/s per device (ThroughputMonitor) | last {ips[-1]:.1f}, median {statistics.median(ips):.1f} of {len(ips)} logs |"
      if ips else "| img/s | none logged |")
print(f"| loss, first / last logged | {loss[0]:.4f} / {loss[-1]:.4f} |" if loss else "| loss | none logged |")
for k in ("allocated", "reserved", "rss"):
    if k in peak:
        print(f"| peak {'GPU ' if k != 'rss' else 'host '}{k} (torch) | {peak[k]} GiB |")
if smi:
    print(f"| peak nvidia-smi memory.used | {max(smi) / 1024:.2f} GiB |")
if wall:
    print(f"| wall time, start-up included | {wall[-1]} s |")
if plan.exists() and (m := re.search(r"^\| total / GPU +\| ([\d.,]+) GiB", plan.read_text(), re.M)):
    print(f"| plan's estimate, total / GPU | {m[1]} GiB |")
    measured = max(smi) / 1024 if smi else float(peak.get("reserved", 0)) or None
    if measured:
        est = float(m[1].replace(",", ""))
        print(f"| plan / measured ({'nvidia-smi' if smi else 'reserved'}) | {est / measured:.2f} |")
if eager.exists() and ips:
    m = re.search(r"^\| ours \| eager \| ([\d.]+) \|", eager.read_text(), re.M)
    if m:
        print(f"| vs benchmark_model ours eager ({m[1]} img/s) | {ips[-1] / float(m[1]):.2f}x |")
EOF
}

# --- env: versions, the matrix-rate and copy ceilings
if want env; then
  part env "$OUT/env.md" 60 "$PY" - "$OUT/env.md" "$TINY" <<'EOF'
import platform, subprocess, sys, time
import torch
out, tiny = sys.argv[1], sys.argv[2] == "1"
lines = ["| item | value |", "|---|---|", f"| python | {platform.python_version()} |"]
for name in ("torch", "triton", "timm", "transformers", "lightning", "hydra", "omegaconf", "webdataset", "deepspeed",
             "simplejpeg"):
    try:
        mod = __import__(name)
        lines.append(f"| {name} | {getattr(mod, '__version__', '?')} ({mod.__file__.rsplit('/', 2)[0]}) |")
    except Exception as e:  # noqa: BLE001
        lines.append(f"| {name} | NOT IMPORTABLE: {type(e).__name__}: {str(e)[:120]} |")
cuda = torch.cuda.is_available()
if cuda:
    p = torch.cuda.get_device_properties(0)
    lines.append(f"| GPU | {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, cc {p.major}.{p.minor} |")
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    lines.append(f"| driver, SM clock / max, power limit | {smi} |")
dev, dtype, n = ("cuda", torch.bfloat16, 8192) if cuda else ("cpu", torch.float32, 1024)
a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
sync = torch.cuda.synchronize if cuda else (lambda: None)
for _ in range(3):
    a @ b
sync(); t = time.perf_counter()
for _ in range(10):
    a @ b
sync(); rate = 10 * 2 * n**3 / (time.perf_counter() - t) / 1e12
lines.append(f"| {'bf16' if cuda else 'fp32'} matmul {n}^3, random data, mean of 10 | {rate:.4g} TFLOP/s |")
if cuda:
    x = torch.empty(2 * 2**30, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    y.copy_(x); sync(); t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    sync(); lines.append(f"| device-to-device copy, 2 GiB, read + write | {10 * 2 * x.numel() / (time.perf_counter() - t) / 1e12:.2f} TB/s |")
open(out, "w").write("\n".join(lines) + "\n")
open("/tmp/gpucheck_peak_tflops", "w").write(f"{rate:.4g}")
print("\n".join(lines))
EOF
fi
MEASURED=$(cat /tmp/gpucheck_peak_tflops 2>/dev/null || echo 790)

# --- (b) which SDPA kernel
if want sdpa; then
  part sdpa "$OUT/sdpa.md" 90 "$PY" scripts/sdpa_backend.py "${SDPA[@]}" --out "$OUT/sdpa.md"
fi

# --- (a) the model benchmark, eager
if want eager; then
  part eager "$OUT/model_eager.md" 170 "$PY" scripts/benchmark_model.py "${MODEL[@]}" --impls "$EAGER_IMPLS" \
    --rounds 1 "${STEPS[@]}" --mfu --peak-tflops "989,$MEASURED" --out "$OUT/model_eager.md"
fi

# --- (c) pretrain SwinV2-B end to end
if want base; then
  part base "$OUT/pretrain_base.md" 120 bash -c 'pretrain_run "$@"' _ "$RUNS/base" "${BASE[@]}" "${RUN[@]}"
  run_table "pretrain ${BASE[*]} ${RUN[*]}" "$RUNS/base" "$OUT/model_eager.md" - >>"$OUT/pretrain_base.md"
fi

# --- (d) SwinV2-G on the one GPU: the plan, then a few steps with its recipe's defaults
if want giant; then
  part plan "$OUT/giant.md" 60 bash -c "$PY -m simmim_swinv2.plan ${GIANT[*]} data=synthetic > $RUNS/plan.md"
  { echo "### plan: python -m simmim_swinv2.plan ${GIANT[*]} data=synthetic"; echo; grep '^|' "$RUNS/plan.md"; echo; } >>"$OUT/giant.md"
  part giant "$OUT/giant.md" 240 bash -c 'pretrain_run "$@"' _ "$RUNS/giant" "${GIANT[@]}" "${RUN[@]}"
  run_table "pretrain ${GIANT[*]} ${RUN[*]}" "$RUNS/giant" - "$RUNS/plan.md" >>"$OUT/giant.md"
fi

# --- (a) the model benchmark, compiled: last, with what is left
if want compiled; then
  part compiled "$OUT/model_compiled.md" 600 "$PY" scripts/benchmark_model.py "${MODEL[@]}" --impls "$COMPILED_IMPLS" \
    --rounds 1 "${CSTEPS[@]}" --compile-only --out "$OUT/model_compiled.md"
fi

echo "gpu_check: done after $((SECONDS - START))s"
for f in "$OUT"/*.md; do echo; echo "## $(basename "$f")"; cat "$f"; done
