# Sourced by slurm/pretrain.sh and slurm/finetune.sh (from the submit directory): environment, NCCL, run dir.
# Adapt here once for your cluster (slurm/README.md).

# --- software: uncomment what your cluster needs ------------------------------------------------------
# module load cuda/12.4                       # if the driver's CUDA is not enough
# source ~/miniconda3/etc/profile.d/conda.sh && conda activate simmim
if [[ -n "${SIMMIM_VENV:-}" ]]; then source "$SIMMIM_VENV/bin/activate"
elif [[ -f .venv/bin/activate && -z "${VIRTUAL_ENV:-}" ]]; then source .venv/bin/activate; fi

# --- NCCL: settings that help on real clusters (all commented; enable the ones your fabric needs) ---------
# export NCCL_DEBUG=WARN                      # INFO once to see which transport (IB / socket) NCCL picked
# export NCCL_SOCKET_IFNAME=ib0               # bootstrap on the fast interface, not docker0/lo (hangs at init)
# export NCCL_IB_HCA=mlx5                     # InfiniBand adapters to use, when several kinds exist
# export NCCL_IB_DISABLE=1                    # only if there is no InfiniBand and NCCL mis-detects it
# export NCCL_ASYNC_ERROR_HANDLING=1          # a dead rank aborts the job instead of hanging until --time
# export TORCH_NCCL_BLOCKING_WAIT=0
# export NCCL_P2P_LEVEL=NVL                   # only NVLink for peer-to-peer when PCIe P2P is broken/slow
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"   # one thread pool per task, not all cores each
export PYTHONUNBUFFERED=1                           # logs appear as they happen

# Stable across requeue (same job id) so resume=auto continues; SIMMIM_RUN_DIR to choose it yourself.
RUN_DIR="${SIMMIM_RUN_DIR:-${SIMMIM_OUTPUT_ROOT:-outputs}/slurm/${SLURM_JOB_NAME}_${SLURM_JOB_ID}}"

# The trainer is the composed config's, as on a workstation: the model config picks it by size
# (conf/model/swinv2_{tiny,small,base,large}.yaml: trainer=gpu, bf16, DDP over the job's tasks; huge/giant: ZeRO-3),
# trainer=... on the command line wins, and SIMMIM_TRAINER=<name> is the same as trainer=<name> first.
TRAINER_ARGS=()
[[ -n "${SIMMIM_TRAINER:-}" ]] && TRAINER_ARGS=("trainer=$SIMMIM_TRAINER")

if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; fi
echo "job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}: run dir $RUN_DIR"
