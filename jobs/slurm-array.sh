#!/usr/bin/env bash
# Slurm job array: 8 tasks, each runs one shard of the manifest prompts.csv in
# the folder you submit from. Submit from that folder:
#   cd /data/gen                       # holds prompts.csv
#   export TENSORSLAB_API_KEY=...      # inherited by every task
#   sbatch jobs/slurm-array.sh         # returns at once
#   sbatch --wait --array=1-4 jobs/slurm-array.sh   # 4 shards; blocks until
#                                      # all are done, exit 0 only if all succeeded
# Slurm sets SLURM_ARRAY_TASK_ID (1..8 here), SLURM_ARRAY_TASK_MIN and
# SLURM_ARRAY_TASK_COUNT; the runner turns them into shard 0..7 of 8 by itself.
# Each task writes to its own run directory runs/prompts-shard-<i> on shared
# storage; merge afterwards:
#   batch-runner merge runs/prompts runs/prompts-shard-*
# Resubmitting the array (or a failed task) resumes from each shard's ledger.
# The tasks inherit the submitting shell's environment: batch-runner must be on
# its PATH (activate the venv first, or PATH=/opt/zimage/.venv/bin:$PATH sbatch ...).
# Logs go to zimage-<job>_<task>.log beside prompts.csv: Slurm does not create
# an --output directory, and a task whose log folder is missing fails silently.
#SBATCH --job-name=zimage-batch
#SBATCH --array=1-8
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
#SBATCH --time=12:00:00
#SBATCH --output=zimage-%A_%a.log
set -euo pipefail

: "${TENSORSLAB_API_KEY:?export TENSORSLAB_API_KEY before sbatch (it is inherited)}"
: "${SLURM_ARRAY_TASK_ID:?submit this script with sbatch (it is a job array)}"
# (task id - first id) / step: directories run 0..N-1 for any --array=A-B:S
shard=$(((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / ${SLURM_ARRAY_TASK_STEP:-1}))

exec batch-runner run prompts.csv \
    --out "runs/prompts-shard-${shard}" \
    --concurrency 16 \
    --no-progress \
    --log-format json
