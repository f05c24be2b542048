#!/usr/bin/env bash
# Creates .venv at the project root on first use; later calls only re-check the editable install.
# torch is pinned and installed first: an unpinned resolve pulls a multi-GB CUDA build (docs/setup.md).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.wings-installed"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check torch==2.13.0
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$root[lab,test,eval]"
  # lmms-eval and DeepSpeed without their own requirements, which would replace the pinned CPU torch
  # (lmms-eval requires torchvision; DeepSpeed's isolated build fetches a torch): see docs/tools.md.
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "lmms-eval>=0.7,<0.8"
  "$venv/bin/pip" install -q --disable-pip-version-check loguru tenacity "filelock<4"
  "$venv/bin/pip" install -q --disable-pip-version-check -U setuptools wheel  # DeepSpeed builds from source
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation "deepspeed>=0.19" \
    hjson einops msgpack py-cpuinfo
  touch "$stamp"
fi
