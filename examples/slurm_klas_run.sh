#!/usr/bin/env bash
# klas run on a SLURM cluster: one task per node, torchrun starts one rank per GPU on each.
#
#   sbatch examples/slurm_klas_run.sh configs/imagenet_deit.yaml
#
# Set `device: cuda` in the config (NCCL between the GPUs; `device: cpu` runs gloo ranks). The
# job can be requeued or resubmitted as it is: every stage resumes from what is on disk.
#SBATCH --job-name=klas-run
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --output=klas-run-%j.log
#SBATCH --requeue
set -euo pipefail

CONFIG="${1:?usage: sbatch examples/slurm_klas_run.sh CONFIG.yaml}"
GPUS_PER_NODE="${SLURM_GPUS_ON_NODE:-4}"
HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"

# The output folder (`out:` in the config) must be on a file system every node sees.
srun torchrun \
    --nnodes="$SLURM_NNODES" \
    --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_id="$SLURM_JOB_ID" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$HEAD_NODE:29500" \
    -m klas run "$CONFIG" --quiet
