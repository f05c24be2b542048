"""`wings` command line: one subcommand per typed, documented function.

The options of each subcommand are derived from its function's signature and the help from its
docstring (`wings.cli_builder`), so the command line cannot drift from the library. To add a
subcommand, write the function (next to the code it runs, with library imports inside it) and add
one line to `COMMANDS`:

    Command("export-llm", "wings.cli_commands:export_llm"),        # wings export-llm ...
    Command("pool convert", "wings.cli_commands:pool_convert"),    # wings pool convert ...
    Passthrough("lmms-eval", "wings.integrations.lmms_eval:lmms_eval_main"),  # wings lmms-eval ARGS (argv as is)

A space in the name makes a group (`wings pool convert`); give the group a line in `GROUPS`.

Errors the user can fix (`wings.errors.WingsError`: bad data, recipe, config, arguments, a missing,
damaged or wrong-kind model directory, an output directory holding a previous run; and missing files)
end as one line `error: <message>` with exit status 1; `--debug` or `WINGS_DEBUG=1` shows their
traceback. Any other exception is a bug and shows its traceback. The commands check their arguments
at this boundary (`wings.validation`) before any model loads.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .cli_builder import add_function_arguments, call_with_namespace, parse_docstring, takes_extra_words
from .cli_commands import auto_threads  # noqa: F401  (public: the lab's default thread count)
from .errors import WingsError

# Missing input files are the commonest user error, and our loaders name the path in the message.
USER_ERRORS = (WingsError, FileNotFoundError)
DEBUG_VARIABLE = "WINGS_DEBUG"
RESERVED = {"help", "verbose", "debug", "command_name", "wings_command", "wings_function", "unavailable"}


@dataclass(frozen=True)
class Command:
    """A subcommand: `name` (words separated by spaces) runs `target`, "module:function"."""

    name: str
    target: str

    def load(self) -> Callable:
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class Passthrough(Command):
    """A subcommand that hands the rest of the command line, unparsed, to `target(argv) -> int`."""


COMMANDS: tuple[Command, ...] = (
    Command("train", "wings.cli_commands:train"),
    Command("data prepare", "wings.cli_commands:data_prepare"),
    Command("data stats", "wings.cli_commands:data_stats"),
    Command("laws", "wings.cli_commands:laws"),
    Command("iit build", "wings.cli_commands:iit_build"),
    Command("iit eval", "wings.cli_commands:iit_eval"),
    Command("eval", "wings.cli_commands:evaluate"),
    Command("pool convert", "wings.cli_commands:pool_convert"),
    Passthrough("lm-eval", "wings.cli_commands:lm_eval"),
    Command("lab", "wings.cli_commands:lab"),
    Command("chat", "wings.cli_commands:chat"),
    Command("demo", "wings.cli_commands:demo"),
    Passthrough("serve", "wings.serving:serve_main"),
    Command("export", "wings.cli_commands:export"),
    Command("export-llm", "wings.cli_commands:export_llm"),
    Passthrough("lmms-eval", "wings.integrations.lmms_eval:lmms_eval_main"),
)
GROUPS = {
    "data": "training data: prepare the cache ahead of time, statistics",
    "iit": "the Interleaved Image-Text benchmark",
    "pool": "multiple-choice pools for text-only, multimodal and IIT scoring",
}


def _common_options(suppress: bool) -> argparse.ArgumentParser:
    # Accepted before and after the subcommand; below it they must not reset what the top level set.
    parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS if suppress else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks of user errors (or {DEBUG_VARIABLE}=1)")
    return parser


def build_parser(commands: tuple[Command, ...] | None = None) -> argparse.ArgumentParser:
    """The `wings` parser for `commands` (default: `COMMANDS`); a parsed namespace holds its
    `wings_command` and `wings_function`."""
    commands = COMMANDS if commands is None else commands
    parser = argparse.ArgumentParser(
        prog="wings", description="WINGS multimodal LLMs without text-only forgetting", parents=[_common_options(False)]
    )
    parser.set_defaults(verbose=False, debug=False)
    common = _common_options(True)
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {(): parser.add_subparsers(dest="command_name",
                                                                                          required=True)}
    for command in commands:
        *path, leaf = command.name.split()
        for depth in range(len(path)):
            key = tuple(path[: depth + 1])
            if key not in groups:
                group = groups[key[:-1]].add_parser(key[-1], help=GROUPS.get(" ".join(key)))
                groups[key] = group.add_subparsers(dest=f"{'_'.join(key)}_command", required=True)
        sub = groups[tuple(path)]
        try:
            function = command.load()
        except ImportError as err:  # an optional dependency is missing: say so when the command is used
            p = sub.add_parser(leaf, help=f"(unavailable: {err})", add_help=False)
            p.set_defaults(wings_command=command, unavailable=str(err))
            continue
        reserved = RESERVED & set(inspect.signature(function).parameters)
        if reserved:
            raise TypeError(f"{command.target}: parameter(s) {sorted(reserved)} clash with the options of every command")
        summary, description, _ = parse_docstring(function)
        if isinstance(command, Passthrough):
            p = sub.add_parser(leaf, help=summary, description=description or summary, add_help=False)
        else:
            p = sub.add_parser(leaf, help=summary, description=f"{summary}\n\n{description}".strip(),
                               parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter)
            add_function_arguments(p, function)
        p.set_defaults(wings_command=command, wings_function=function)
    return parser


def _passthrough(argv: list[str], commands: tuple[Command, ...]) -> tuple[Passthrough, list[str]] | None:
    for command in commands:
        words = command.name.split()
        if isinstance(command, Passthrough) and argv[: len(words)] == words:
            return command, argv[len(words):]
    return None


def _debug_from_environment() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run `wings ARGV`; returns the exit status (1 after a user error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    passthrough = _passthrough(argv, COMMANDS)
    if passthrough is not None:
        command, rest = passthrough
        return _run(lambda: command.load()(rest), debug=_debug_from_environment())
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "unavailable", None):
        parser.error(f"'{args.wings_command.name}' is unavailable: {args.unavailable}")
    # argparse cannot collect positionals that follow options: recipe overrides (key=value) may come last.
    words = takes_extra_words(args.wings_function)
    stray = [item for item in extra if item.startswith("-") or words is None]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        setattr(args, words, [*getattr(args, words), *extra])
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    debug = args.debug or _debug_from_environment()
    return _run(lambda: call_with_namespace(args.wings_function, args), debug=debug)


def _run(call: Callable[[], int | None], debug: bool) -> int:
    try:
        status = call()
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
