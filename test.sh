#!/usr/bin/env bash
# Runs the whole test suite (slow end-to-end checks included) in .venv, creating it on first use; then, in
# .venv-serve (vLLM for CPU, transformers at the lowest version the package supports), the vLLM serving
# tests and a floor check of the config and model. WINGS_SKIP_SERVE=1 skips the second part locally
# (CI runs it). Arguments go to the first pytest run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/ensure_venv.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$root/.venv/bin/python" -m pytest -q "$@"
if [ "${WINGS_SKIP_SERVE:-0}" = "1" ]; then
  echo "WINGS_SKIP_SERVE=1: vLLM serving tests skipped"
  exit 0
fi
"$root/scripts/ensure_venv_serve.sh"
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
# The floor check: config, processor, training arguments, and the model's core behaviour (parity with the LLM, cached
# generation, save/load, pinned numbers) on the lowest transformers; the whole model suite runs above.
# activation_checkpointing_enable is a newer-transformers API; the floor check leaves that one test out.
exec "$root/.venv-serve/bin/python" -m pytest -q -p no:cacheprovider tests/serving tests/test_config.py \
  tests/test_processing.py tests/training/test_recipe.py tests/modeling/test_parity.py tests/modeling/test_generation.py \
  tests/modeling/test_save_load.py tests/modeling/test_pinned_outputs.py tests/modeling/test_static_cache.py \
  --deselect tests/modeling/test_save_load.py::test_gradient_checkpointing_gives_the_same_gradients
