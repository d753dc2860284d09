#!/usr/bin/env bash
# Slurm job array: 8 tasks, each runs one shard of the manifest.
#   sbatch jobs/slurm-array.sh
# Slurm sets SLURM_ARRAY_TASK_ID (1..8 here), SLURM_ARRAY_TASK_MIN and
# SLURM_ARRAY_TASK_COUNT; the runner turns them into shard 0..7 of 8 by itself.
# Each task writes to its own run directory on shared storage; merge afterwards:
#   batch-runner merge runs/prompts runs/prompts-shard-*
# Resubmitting the array (or a failed task) resumes from each shard's ledger.
#SBATCH --job-name=zimage-batch
#SBATCH --array=1-8
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
#SBATCH --time=12:00:00
#SBATCH --output=logs/zimage-%A-%a.log
set -euo pipefail

: "${TENSORSLAB_API_KEY:?export TENSORSLAB_API_KEY before sbatch (it is inherited)}"
shard=$((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN))

exec batch-runner run prompts.csv \
    --out "runs/prompts-shard-${shard}" \
    --concurrency 16 \
    --no-progress \
    --log-format json
