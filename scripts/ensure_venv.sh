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
  touch "$stamp"
fi
