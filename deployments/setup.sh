#!/usr/bin/env bash
# Create (or update) the work pools and the deployments. Idempotent: safe to re-run.
#   bash deployments/setup.sh [--gpus N]
# N = the number of GPUs behind the gpu pool (default: what nvidia-smi sees, else 1); it becomes the
# pool's concurrency limit, so never more shards run than there are GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."

gpus=""
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) gpus="${2:?--gpus needs a number}"; shift 2 ;;
    *) echo "setup.sh: unknown argument '$1'; usage: bash deployments/setup.sh [--gpus N]" >&2; exit 2 ;;
  esac
done
if [ -z "$gpus" ]; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "${gpus:-0}" -gt 0 ] || gpus=1
fi
case "$gpus" in ''|*[!0-9]*|0) echo "setup.sh: --gpus must be a positive integer, got '$gpus'" >&2; exit 2 ;; esac

: "${PREFECT_API_URL:?set PREFECT_API_URL to your Prefect server (e.g. http://127.0.0.1:4200/api)}"

ensure_pool() {  # name type
  if prefect work-pool inspect "$1" >/dev/null 2>&1; then
    echo "work pool '$1' exists"
  else
    prefect work-pool create "$1" --type "$2"
  fi
}
ensure_pool cpu process
ensure_pool gpu process
prefect work-pool set-concurrency-limit gpu "$gpus"
# `prefect deploy` substitutes {{ $VARS }} it finds in its own environment; DCT_CODE_DIR must stay a
# placeholder in the stored pull step (it is the WORKER's checkout, resolved when a run starts).
env -u DCT_CODE_DIR prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml
echo "pools: cpu, gpu (concurrency limit $gpus); deployments: dct/optimize-all, dct-shard/gpu, dct/synthesize-all, dct-synthesize-shard/gpu"
