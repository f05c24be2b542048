#!/usr/bin/env bash
# The main job on its embedded default, in .venv (created on first use). Extra arguments go to `wings`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/ensure_venv.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$#" -eq 0 ]; then set -- lab; fi
exec "$root/.venv/bin/wings" "$@"
