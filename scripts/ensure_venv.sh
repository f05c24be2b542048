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
torch_version=2.13.0
# timm requires torchvision, and no torchvision build loads beside the CPU torch.
lmms_left_out=(torchvision timm)

quiet_pip() {
  # pip install, quiet; its dependency-resolver report of the packages left out on purpose is dropped
  # (a newcomer reads that 30-line ERROR block as a failed install). Any other message is shown.
  local log status=0
  log="$(mktemp)"
  "$venv/bin/pip" install -q --disable-pip-version-check "$@" 2>"$log" || status=$?
  if [ "$status" -ne 0 ]; then
    cat "$log" >&2
  else
    grep -v -e "^ERROR: pip's dependency resolver does not currently take into account" \
      -e "^lmms-eval [^ ]* requires \(torchvision\|timm\)\b" "$log" >&2 || true
  fi
  rm -f "$log"
  return "$status"
}

if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  constraints="$(mktemp)"
  echo "torch==$torch_version" >"$constraints"
  quiet_pip torch==$torch_version
  quiet_pip -e "$root[lab,test,eval]"
  # lmms-eval and DeepSpeed without their own requirements, which would replace the pinned CPU torch
  # (lmms-eval requires torchvision; DeepSpeed's isolated build fetches a torch): see docs/tools.md.
  # lmms-eval's other requirements are installed next, under a constraint that keeps the pinned torch;
  # pip's report of the two left out is dropped, and one line says what they are instead.
  quiet_pip --no-deps "lmms-eval>=0.7,<0.8"
  mapfile -t lmms_requirements < <("$venv/bin/python" - "${lmms_left_out[@]}" <<'PY'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement

skip = {"torch", *sys.argv[1:]}
for line in requires("lmms-eval") or []:
    requirement = Requirement(line)
    if requirement.marker is None and requirement.name.lower().replace("_", "-") not in skip:
        print(line)
PY
)
  quiet_pip -c "$constraints" "${lmms_requirements[@]}" "filelock<4"
  echo "wings: lmms-eval is installed without ${lmms_left_out[*]}: no build of them loads beside the CPU torch" \
    "$torch_version; lmms-eval tasks that import them will not run."
  quiet_pip -U setuptools wheel  # DeepSpeed builds from source
  quiet_pip --no-deps --no-build-isolation "deepspeed>=0.19" hjson einops msgpack py-cpuinfo ninja
  rm -f "$constraints"
  touch "$stamp"
fi
