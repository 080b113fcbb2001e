#!/bin/bash
# SimMIM pretraining under SLURM: one task per GPU, Lightning's SLURMEnvironment wires the ranks.
#   mkdir -p logs && sbatch slurm/pretrain.sh model=swinv2_giant data=imagenet22k
#   sbatch --nodes=4 slurm/pretrain.sh experiment=simmim_pretrain__swinv2_base__img192_window6__800ep data=imagenet1k
# Every argument is a Hydra override, passed through. 120 s before --time runs out SLURM sends SIGUSR1:
# every rank saves <run dir>/hpc_ckpt_<n>.ckpt after the current step and the job is requeued (callbacks.preemption); the requeued job (same job id, so the
# same run dir) resumes from it (resume=auto). SIGTERM (preemption, scancel) saves the same way and exits without
# requeueing: slurm/README.md says how each way of stopping a job reaches it, and how to adapt partition/account/modules.
#SBATCH --job-name=simmim-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8          # = GPUs per node: one process per GPU
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8            # data-loading workers per GPU (num_workers) + 1
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@120         # to every task of the step, 120 s before the time limit
#SBATCH --requeue
#SBATCH --open-mode=append           # a requeued job appends to its log instead of truncating it
#SBATCH --output=logs/%x-%j.out      # logs/ must exist (sbatch does not create it)

set -euo pipefail               # the job runs in the submit directory (or sbatch --chdir): the repo root
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" 2>/dev/null || source slurm/common.sh

srun python -m simmim_swinv2.pretrain "${TRAINER_ARGS[@]}" trainer.num_nodes="$SLURM_NNODES" \
  trainer.devices="$SLURM_NTASKS_PER_NODE" hydra.run.dir="$RUN_DIR" "$@"
