"""Every code snippet of README.md works as written: the Python ones run on tiny models, the shell ones parse.

The Python snippets run in README order, each in a fresh namespace, in one working folder (a later
snippet may read what an earlier one saved). The only change made to them: `LLM = "..."` and
`VISION = "..."` point at a tiny LLM and encoder saved offline instead of hub ids.
"""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiny import make_tiny_hub
from wings.cli import COMMANDS, Passthrough, build_parser

README = Path(__file__).parents[1] / "README.md"


def snippets(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def with_tiny_models(code: str, hub: Path) -> str:
    for name, folder in (("LLM", hub / "llm"), ("VISION", hub / "vision")):
        code, n = re.subn(rf'^{name} = "[^"]*"', f"{name} = {str(folder)!r}", code, flags=re.M)
        assert n <= 1, f"{name} is assigned {n} times"
    return code


def test_readme_python_snippets_run(tmp_path, monkeypatch, capsys):
    hub = make_tiny_hub(tmp_path / "hub")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # "photo.jpg": any photo; a non-square one exercises the padding to a square.
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save("photo.jpg")
    codes = snippets("python")
    assert len(codes) >= 2, "the README's Python snippets were not found"
    assert any('LLM = "' in c for c in codes) and any('VISION = "' in c for c in codes)
    for index, code in enumerate(codes):
        namespace = {"__name__": f"readme_snippet_{index}"}
        exec(compile(with_tiny_models(code, hub), f"README.md python snippet {index}", "exec"), namespace)
    # The build snippet saved a loadable model directory; the chat snippet printed a decoded reply.
    assert (work / "out" / "s0" / "config.json").exists()
    reply = capsys.readouterr().out
    assert reply.strip() and not re.search(r"tensor\(|\[\d+, \d+", reply), reply


def shell_commands() -> list[list[str]]:
    """Every `wings ...` command of the README's bash snippets, as argv after `wings`."""
    commands = []
    for block in snippets("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("wings "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_readme_shell_commands_parse():
    parser = build_parser()
    passthrough = {c.name for c in COMMANDS if isinstance(c, Passthrough)}
    argvs = shell_commands()
    assert {a[0] for a in argvs} >= {"train", "laws", "iit", "eval", "lm-eval"}
    for argv in argvs:
        if argv[0] in passthrough:
            continue
        args, extra = parser.parse_known_args(argv)
        assert all("=" in item and not item.startswith("-") for item in extra), (argv, extra)


def test_no_reference_to_files_a_user_does_not_have():
    """The repository stands alone: what a user needs is in docs/, and everything cites that."""
    root = Path(__file__).parents[1]
    paths = [root / "README.md", *(root / "docs").glob("*.md"), *(root / "src").rglob("*.py"),
             *(root / "recipes").glob("*.yaml"), *(root / "scripts").glob("*"), *(root / "benchmarks").glob("*.py")]
    for path in paths:
        if path.name.startswith("lab_"):
            continue  # written by `wings lab` (src/wings/lab/report.py is checked)
        content = path.read_text()
        for name in ("WINGS.md", "LAB_NOTES", "ENVIRONMENT.md", "VLLM_NOTES", "shared/", "the issue"):
            assert name not in content, f"{path.relative_to(root)} mentions {name}"


def test_readme_layout_lists_every_folder():
    root = Path(__file__).parents[1]
    layout = README.read_text().split("## Layout", 1)[1]
    folders = [p for p in root.iterdir() if p.is_dir() and (p.name == ".ci" or not p.name.startswith((".", "__")))
               and not p.name.endswith(".egg-info") and p.name not in ("runs", "build", "dist")]
    folders += [p for p in (root / "src" / "wings").iterdir() if p.is_dir() and not p.name.startswith("__")]
    for folder in folders:
        name = folder.relative_to(root).as_posix()
        assert name in layout, f"README Layout does not list {name}/"
