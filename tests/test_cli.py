"""The `wings` command line: derived from the command functions, the old flags kept, user errors as one line."""

import argparse
import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import wings.cli as cli
from wings import cli_commands
from wings.cli import COMMANDS, Command, Passthrough, build_parser, main
from wings.cli_builder import option_flag, parse_docstring
from wings.data.llava import DataError

COMMON = {"help", "verbose", "debug"}


def leaf_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for word in name.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def parsed_commands():
    parser = build_parser()
    for command in COMMANDS:
        if not isinstance(command, Passthrough):
            yield command, command.load(), leaf_parser(parser, command.name)


def test_every_option_maps_to_a_parameter_and_back():
    for command, function, parser in parsed_commands():
        actions = {a.dest: a for a in parser._actions if a.dest not in COMMON}
        parameters = inspect.signature(function).parameters
        assert set(actions) == set(parameters), command.name
        for name, parameter in parameters.items():
            action = actions[name]
            if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.VAR_POSITIONAL):
                assert action.option_strings == [], (command.name, name)
                continue
            assert action.option_strings == [option_flag(name)], (command.name, name)
            has_default = parameter.default is not parameter.empty
            assert action.required is not has_default, (command.name, name)
            if has_default:
                assert action.default == parameter.default, (command.name, name)
            assert parse_docstring(function)[2].get(name), f"{command.name}: '{name}' has no help in the docstring"


# Every flag the hand-written CLI had (a contract: flags are added, never renamed).
OLD_FLAGS = {
    "train": ["--llm", "--vision", "--data", "--image-folder", "--output", "--init", "--preset", "--max-steps",
              "--resume", "--skip-bad-samples"],
    "laws": ["--model", "--compare", "--data", "--image-folder", "--output", "--limit"],
    "iit build": ["--text-pool", "--visual-pool", "--output", "--per-setting", "--seed", "--settings"],
    "iit eval": ["--model", "--data", "--image-folder", "--method", "--answer-format", "--batch-size", "--output"],
    "eval": ["--model", "--base-llm", "--text-pool", "--visual-pool", "--vqa", "--iit", "--laws-data",
             "--image-folder", "--limit", "--batch-size", "--lm-eval-tasks", "--lm-eval-include", "--output"],
    "lab": ["--output", "--quick", "--seeds", "--models", "--threads", "--jobs", "--study", "--llm-layers"],
    "chat": ["--model", "--image", "--max-new-tokens"],
    "demo": ["--seed", "--steps"],
}
# Library options the hand-written CLI could not reach.
NEW_FLAGS = {
    "laws": ["--batch-size", "--image-mode", "--device"],
    "iit eval": ["--max-new-tokens", "--normalize"],
    "iit build": ["--top-k"],
    "eval": ["--iit-method", "--answer-format", "--mc-method", "--image-mode", "--device"],
}


def test_old_flags_and_subcommands_still_exist_and_library_options_are_reachable():
    parser = build_parser()
    names = {c.name for c in COMMANDS}
    assert set(OLD_FLAGS) | {"lm-eval"} <= names
    for table in (OLD_FLAGS, NEW_FLAGS):
        for name, flags in table.items():
            options = {s for a in leaf_parser(parser, name)._actions for s in a.option_strings}
            assert set(flags) <= options, (name, set(flags) - options)


def _library_functions():
    from wings.chat import chat_loop
    from wings.demo import run_demo
    from wings.evaluation.forgetting import EvalData
    from wings.evaluation.iit import build_iit, evaluate_iit
    from wings.evaluation.laws import run_laws
    from wings.lab.pipeline import LabConfig
    from wings.training.data import prepare_stage_data
    from wings.training.run import train

    from wings.evaluation.converters import convert_pool
    from wings.export import export_hub, export_llm

    eval_data = {f.name: f.default for f in dataclasses.fields(EvalData)}
    lab_config = {f.name: f.default for f in dataclasses.fields(LabConfig) if f.name != "sizes"}
    return {  # command -> (library defaults by parameter, the command's name for a renamed parameter)
        "train": (_defaults(train, skip={"recipe", "callbacks"}), {}),
        "data prepare": (_defaults(prepare_stage_data, skip={"recipe"}), {}),
        "data stats": (_defaults(prepare_stage_data, skip={"recipe"}), {}),
        "laws": (_defaults(run_laws, skip={"exclude_special_tokens", "progress"}),
                 {"model_dir": "model", "data_file": "data", "output_dir": "output"}),
        "iit build": (_defaults(build_iit), {}),
        "iit eval": (_defaults(evaluate_iit, skip={"model", "processor"}), {"dialogues": "data"}),
        "eval": (eval_data, {"laws": "laws_data"}),
        "lab": (lab_config, {}),
        "chat": (_defaults(chat_loop, skip={"lines", "out"}), {"model_dir": "model", "images": "image"}),
        "demo": (_defaults(run_demo), {}),
        "pool convert": (_defaults(convert_pool), {}),
        "export": (_defaults(export_hub), {}),
        "export-llm": (_defaults(export_llm), {}),
    }


def _defaults(function, skip=()):
    return {n: p.default for n, p in inspect.signature(function).parameters.items() if n not in skip}


# A command may say None where it leaves the choice to the library (the option is then not passed on).
LIBRARY_CHOOSES = {("iit eval", "image_mode"), ("laws", "device"), ("lab", "threads"), ("lab", "models"),
                   ("lab", "output"), ("lab", "seeds"),  # each study has its own default
                   ("iit build", "settings"), ("iit build", "text_pool"), ("iit build", "visual_pool"),
                   ("chat", "images")}


def test_every_library_option_is_reachable_with_the_library_default():
    library = _library_functions()
    for command, function, _ in parsed_commands():
        defaults, renamed = library[command.name]
        parameters = inspect.signature(function).parameters
        for name, default in defaults.items():
            cli_name = renamed.get(name, name)
            assert cli_name in parameters, f"wings {command.name}: library option '{name}' is not reachable"
            cli_default = parameters[cli_name].default
            if default is inspect.Parameter.empty or cli_default is inspect.Parameter.empty:
                continue
            if cli_default != default and (command.name, name) not in LIBRARY_CHOOSES:
                pytest.fail(f"wings {command.name} --{cli_name}: default {cli_default!r}, library {default!r}")


@pytest.fixture
def calls(monkeypatch):
    """Replace library entry points by recorders: {name: (args, kwargs)}."""
    import wings.evaluation.checks as checks
    import wings.evaluation.forgetting as forgetting
    import wings.evaluation.iit as iit
    import wings.evaluation.laws as laws
    import wings.evaluation.loading as loading

    seen = {}

    def record(name, result=None):
        def fake(*args, **kwargs):
            seen[name] = (args, kwargs)
            return result() if callable(result) else result
        return fake

    class Laws:
        attention_shift, n_samples, n_skipped = 0.5, 2, 0

    # The paths are made up: the checks of the model and data files are recorders too.
    monkeypatch.setattr(checks, "check_model_reads", record("check_model_reads"))
    monkeypatch.setattr(checks, "require_image_samples", record("require_image_samples"))
    monkeypatch.setattr(laws, "run_laws", record("run_laws", Laws))
    monkeypatch.setattr(laws, "run_laws_compare", record("run_laws_compare", lambda: {"a": Laws(), "b": Laws()}))
    monkeypatch.setattr(iit, "load_pool", record("load_pool", list))
    monkeypatch.setattr(iit, "build_iit", record("build_iit", list))
    monkeypatch.setattr(iit, "write_iit", record("write_iit"))
    monkeypatch.setattr(iit, "load_iit", record("load_iit", list))
    monkeypatch.setattr(iit, "evaluate_iit", record("evaluate_iit", dict))
    monkeypatch.setattr(iit, "iit_table", record("iit_table", str))
    monkeypatch.setattr(loading, "load_model_and_processor", record("load_model", lambda: ("model", "processor")))
    monkeypatch.setattr(forgetting, "evaluate_models", record("evaluate_models", lambda: ([], None, "report")))
    return seen


def test_options_reach_the_library(calls):
    main(["laws", "--model", "m", "--data", "d.json", "--output", "o", "--batch-size", "3", "--image-mode", "resize",
          "--device", "cpu", "--limit", "5"])
    assert calls["run_laws"] == (("m", "d.json", None, "o"),
                                 {"limit": 5, "batch_size": 3, "image_mode": "resize", "device": "cpu"})
    main(["laws", "--compare", "a", "b", "--data", "d.json", "--output", "o"])
    assert calls["run_laws_compare"][0][0] == ["a", "b"] and calls["run_laws_compare"][1]["image_mode"] is None  # the processor's own mode

    main(["iit", "build", "--text-pool", "t.jsonl", "--output", "i.jsonl", "--top-k", "2", "--settings", "T", "T,V"])
    assert calls["build_iit"][1] == {"settings": ["T", "T,V"], "per_setting": 100, "seed": 0, "top_k": 2}

    main(["iit", "eval", "--model", "m", "--data", "i.jsonl", "--max-new-tokens", "4", "--normalize", "sum",
          "--device", "cpu", "--method", "loglik"])
    assert calls["load_model"] == (("m",), {"device": "cpu"})
    kwargs = calls["evaluate_iit"][1]
    assert (kwargs["max_new_tokens"], kwargs["normalize"], kwargs["method"]) == (4, "sum", "loglik")
    assert "image_mode" not in kwargs  # not given: the library decides (the processor's mode)

    main(["eval", "--model", "a", "b", "--output", "r", "--iit", "i.jsonl", "--iit-method", "loglik",
          "--answer-format", "cloze"])
    (models, data, output), _ = calls["evaluate_models"]
    assert models == ["a", "b"] and (data.iit_method, data.answer_format) == ("loglik", "cloze")


def test_list_options_accept_several_values_and_repeats():
    parser = build_parser()
    args = parser.parse_args(["chat", "--model", "m", "--image", "a.png", "--image", "b.png", "c.png"])
    assert args.image == ["a.png", "b.png", "c.png"]
    args = parser.parse_args(["lab", "--models", "llava", "wings", "--quick"])
    assert args.models == ["llava", "wings"] and args.quick and args.seeds is None


def test_train_overrides_may_follow_the_options(monkeypatch):
    import wings.training.run as run

    seen = {}

    def fake_train(recipe, **kwargs):
        seen["recipe"] = recipe
        return run.TrainResult(output_dir=kwargs["output"], global_step=0, train_loss=0.0, seconds=0.0)

    monkeypatch.setattr(run, "train", fake_train)
    assert main(["train", "wings_stage1", "optim.seed=3", "--data", "d.json", "--output", "o",
                 "optim.batch_size=4"]) == 0
    assert (seen["recipe"].optim.seed, seen["recipe"].optim.batch_size) == (3, 4)
    with pytest.raises(SystemExit):
        main(["train", "wings_stage1", "--data", "d.json", "--output", "o", "--no-such-flag"])


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_missing_image_is_one_line_error(tmp_path, capsys):
    code = main(["chat", "--model", str(tmp_path), "--image", str(tmp_path / "missing.png")])
    assert "missing.png" in _one_line_error(capsys, code)


def test_missing_data_is_one_line_error(tmp_path, capsys):
    code = main(["train", "wings_stage1", "--llm", "llm", "--vision", "vision", "--data",
                 str(tmp_path / "missing.json"), "--output", str(tmp_path / "out")])
    assert "missing.json" in _one_line_error(capsys, code)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, where", [
    (["train", "no_such_recipe", "--data", "d.json", "--output", "o"], "no_such_recipe"),
    (["train", "wings_stage1", "--preset", "wings-huge", "--data", "d.json", "--output", "o"], "wings-huge"),
    (["laws", "--data", "d.json", "--output", "o"], "--model"),
    (["iit", "build", "--text-pool", "missing.jsonl", "--output", "o.jsonl"], "missing.jsonl"),
])
def test_user_errors_are_one_line(argv, where, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert where in _one_line_error(capsys, main(argv))


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    argv = ["chat", "--model", str(tmp_path), "--image", str(tmp_path / "missing.png")]
    with pytest.raises(DataError, match="missing.png"):
        main([*argv, "--debug"])
    with pytest.raises(DataError):
        main(["--debug", *argv])
    monkeypatch.setenv("WINGS_DEBUG", "1")
    with pytest.raises(DataError):
        main(argv)


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    def broken(*, seed: int = 0, steps: int = 150, output: str = "runs/demo") -> int:
        """Fails like a bug would.

        Args:
            seed, steps, output: as `wings demo`.
        """
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli_commands, "demo", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["demo"])


def test_console_exit_status_and_stderr(tmp_path):
    """The installed command's behaviour: status 1, one stderr line, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "wings.cli", "train", "wings_stage1", "--data", str(tmp_path / "missing.json"),
         "--output", str(tmp_path / "out"), "--llm", "x", "--vision", "y"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: ")
    assert "missing.json" in result.stderr


def documented(*, pool: str, output: str, limit: int | None = None) -> int:
    """Convert a pool (a command another module adds with one registry line).

    Args:
        pool: the source file.
        output: where the converted pool goes.
        limit: keep at most this many items.
    """
    print(f"converted {pool} -> {output} ({limit})")
    return 0


def test_a_new_subcommand_is_one_registry_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", (*COMMANDS, Command("pool demo-convert", f"{__name__}:documented"),
                                          Command("missing-extra", "wings.no_such_module:serve")))
    assert main(["pool", "demo-convert", "--pool", "mmlu.csv", "--output", "p.jsonl", "--limit", "3"]) == 0
    assert "converted mmlu.csv -> p.jsonl (3)" in capsys.readouterr().out
    help_text = leaf_parser(cli.build_parser(cli.COMMANDS), "pool demo-convert").format_help()
    assert "Convert a pool" in help_text and "keep at most this many items" in help_text
    # A command whose module cannot be imported is listed and refuses to run, naming why.
    with pytest.raises(SystemExit):
        main(["missing-extra"])
    assert "wings.no_such_module" in capsys.readouterr().err


def test_passthrough_hands_over_the_rest(monkeypatch):
    seen = []
    monkeypatch.setattr(cli_commands, "lm_eval", lambda argv: seen.append(argv) or 0)
    assert main(["lm-eval", "--model", "hf", "--tasks", "arc_easy"]) == 0
    assert seen == [["--model", "hf", "--tasks", "arc_easy"]]


def test_docstring_parsing():
    def f(a: int, b: str = "x", c: bool = False) -> None:
        """Summary line.

        More words
        over two lines.

        Args:
            a: the first
                and its continuation.
            b, c: shared help.

        Returns:
            nothing.
        """

    summary, description, params = parse_docstring(f)
    assert summary == "Summary line."
    assert description == "More words\nover two lines."
    assert params == {"a": "the first and its continuation.", "b": "shared help.", "c": "shared help."}


def test_help_of_every_subcommand_renders(capsys):
    for command in COMMANDS:
        if isinstance(command, Passthrough):
            continue
        with pytest.raises(SystemExit) as exit_info:
            main([*command.name.split(), "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: wings {command.name}" in out and parse_docstring(command.load())[0] in out


def test_lab_help_and_readme_agree_on_the_quick_time(capsys):
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    with pytest.raises(SystemExit):
        main(["lab", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    in_help = re.findall(r"--quick\S* .*?about (\d+) minutes", help_text)
    in_readme = re.findall(r"lab --quick` \(about (\d+) minutes", readme)
    assert in_help and in_readme and set(in_help) == set(in_readme), (in_help, in_readme)


def test_annotations_become_argparse_types():
    from typing import Literal

    from wings.cli_builder import add_function_arguments, call_with_namespace

    def f(name: str, /, *rest: int, path: Path, mode: Literal["a", "b"] = "a", sizes: tuple[int, ...] = (1,),
          cache: bool = True, fast: bool = False, scale: float | None = None) -> dict:
        """F.

        Args:
            name, rest, path, mode, sizes, cache, fast, scale: the values.
        """
        return dict(name=name, rest=rest, path=path, mode=mode, sizes=sizes, cache=cache, fast=fast, scale=scale)

    parser = argparse.ArgumentParser()
    add_function_arguments(parser, f)
    got = call_with_namespace(f, parser.parse_args(["n", "1", "2", "--path", "p", "--mode", "b", "--sizes", "3",
                                                    "4", "--no-cache", "--fast", "--scale", "0.5"]))
    assert got == dict(name="n", rest=(1, 2), path=Path("p"), mode="b", sizes=[3, 4], cache=False, fast=True,
                       scale=0.5)
    defaults = call_with_namespace(f, parser.parse_args(["n", "--path", "p"]))
    assert (defaults["rest"], defaults["mode"], defaults["sizes"], defaults["cache"], defaults["scale"]) == (
        (), "a", (1,), True, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["n", "--path", "p", "--mode", "c"])

    def untyped(x, *, y: int = 0) -> None:
        """No annotation on x."""

    with pytest.raises(TypeError, match="'x' has no type annotation"):
        add_function_arguments(argparse.ArgumentParser(), untyped)


def test_lab_study_frontier_reaches_run_study(monkeypatch, tmp_path, capsys):
    import wings.lab.study as study

    calls = []

    def fake_run_study(name, **options):
        calls.append((name, options))
        Path(options["output"]).mkdir(parents=True, exist_ok=True)
        (Path(options["output"]) / "report.md").write_text("frontier report")
        return {}

    monkeypatch.setattr(study, "run_study", fake_run_study)
    out = tmp_path / "study"
    assert main(["lab", "--study", "frontier", "--quick", "--jobs", "1", "--threads", "1", "--output", str(out),
                 "--llm-layers", "8"]) == 0
    name, options = calls[0]
    assert name == "frontier" and options["quick"] and options["seeds"] is None  # the study's own default: 3
    assert (options["jobs"], options["threads"], options["llm_layers"]) == (1, 1, 8)
    assert "frontier report" in capsys.readouterr().out
    assert main(["lab", "--study", "frontier", "--models", "llava"]) == 1  # rows belong to the default study


def test_the_module_docstring_examples_name_real_commands():
    examples = re.findall(r'(Command|Passthrough)\("([^"]+)", "([^"]+)"\)', cli.__doc__)
    assert len(examples) == 3
    registered = {(c.name, c.target) for c in COMMANDS}
    for kind, name, target in examples:
        assert (name, target) in registered, (name, target)
        assert callable(getattr(cli, kind)(name, target).load())
