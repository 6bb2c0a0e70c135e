#!/usr/bin/env bash
# klas run on a SLURM cluster: one task per node; torchrun starts KLAS_PROCS_PER_NODE ranks on each
# (one per GPU on a GPU node, 1 elsewhere).
#
#   sbatch examples/slurm_klas_run.sh CONFIG.yaml                        # CPU: gloo ranks
#   sbatch --gpus-per-node=4 examples/slurm_klas_run.sh configs/imagenet_deit.yaml
#                                                                        # GPU: `device: cuda`, NCCL
#   sbatch --nodes=2 --gpus-per-node=8 examples/slurm_klas_run.sh CONFIG.yaml
#
# What to change for a site (here, or on sbatch's command line, which overrides these lines):
#   --partition / --account     your site's names;
#   --gpus-per-node             on GPU partitions (leave it out on CPU partitions);
#   --cpus-per-task, --time     per node, for the whole job;
#   KLAS_VENV                   a virtual environment with klas installed (activated on each node);
#   KLAS_PROCS_PER_NODE         ranks per node, when not one per GPU;
#   KLAS_PORT                   the rendezvous port, when the one derived from the job id is taken.
# The config's `out:` folder must be on a file system every node sees. Batch sizes in the config
# are global (the batch of one process, shared out across the ranks: multiples of the rank count),
# so the results do not depend on the number of ranks; the learning rate is not rescaled.
#
# Near the time limit SLURM sends USR1 to this script (--signal, 120 s ahead); it requeues the job,
# which starts again from this script and resumes every stage from what is on disk. A job can
# also be resubmitted by hand as it is.
#SBATCH --job-name=klas-run
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=12:00:00
#SBATCH --output=klas-run-%j.log
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -euo pipefail

CONFIG="${1:?usage: sbatch examples/slurm_klas_run.sh CONFIG.yaml}"
if [[ -n "${KLAS_VENV:-}" ]]; then
    # shellcheck disable=SC1091
    source "$KLAS_VENV/bin/activate"
fi
PYTHON="${KLAS_PYTHON:-python}"
PROCS_PER_NODE="${KLAS_PROCS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}"
HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
# one port per job (as klas.distributed.port_for_job), so that two jobs on one node do not collide
PORT="${KLAS_PORT:-$((20000 + (SLURM_JOB_ID * 8) % 40000))}"

requeue() {
    echo "klas-run: time limit near (USR1): requeueing job $SLURM_JOB_ID to resume from disk"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
}
trap requeue USR1

echo "klas-run: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}), $SLURM_NNODES node(s) x $PROCS_PER_NODE rank(s), rendezvous $HEAD_NODE:$PORT"
# in the background, so that the trap runs while the step does (bash runs traps between commands)
srun --kill-on-bad-exit=1 "$PYTHON" -m torch.distributed.run \
    --nnodes="$SLURM_NNODES" \
    --nproc_per_node="$PROCS_PER_NODE" \
    --rdzv_id="$SLURM_JOB_ID" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$HEAD_NODE:$PORT" \
    -m klas run "$CONFIG" --quiet &
wait $!
