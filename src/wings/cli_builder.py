"""Build argparse subcommands from typed, documented functions (the way litgpt derives its CLI).

A command is one function. Its signature is the command line and its docstring is the help:

- a positional-only parameter (before `/`) is a positional argument; `*args` collects the remaining
  positional words (also those written after the options, e.g. recipe overrides `key=value`);
- every other parameter is an option `--name-with-dashes`, required when it has no default;
- the annotation gives the type: `int`, `float`, `str`, `Path`; `bool` is a switch (`--x`, or
  `--x/--no-x` when the default is True); `Literal[...]` gives the choices; `list[T]` /
  `tuple[T, ...]` takes one or more values and may be repeated (`--image a.png --image b.png`);
  `T | None` is optional;
- the docstring's first paragraph is the command's help, and its `Args:` section (Google style,
  `name: text`, or `a, b: text` for several) gives each option's help.

Nothing is declared twice, so the command line cannot drift from the function it calls.
"""

from __future__ import annotations

import argparse
import inspect
import re
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

SCALARS = (str, int, float, Path)
_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_SECTION_HEADER = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")
_PARAM_LINE = re.compile(r"^(\s*)([A-Za-z_][\w, ]*?)(?:\s*\([^)]*\))?:\s*(.*)$")


def parse_docstring(function: Callable) -> tuple[str, str, dict[str, str]]:
    """(summary, description, {parameter: help}) from a Google-style docstring.

    The summary is the first line; the description is what follows it up to the first section
    header (`Args:`, `Returns:`, ...); parameter help lines may continue on more-indented lines.
    """
    doc = inspect.getdoc(function) or ""
    lines = doc.splitlines()
    summary = lines[0].strip() if lines else ""
    description: list[str] = []
    params: dict[str, str] = {}
    in_args, names, indent = False, [], None
    for line in lines[1:]:
        if _ARGS_HEADER.match(line):
            in_args, names, indent = True, [], None
            continue
        if _SECTION_HEADER.match(line) and not line.startswith(" "):
            in_args, names = False, []
            description.append("\0")  # anything after a section header is not the description
            continue
        if not in_args:
            description.append(line)
            continue
        match = _PARAM_LINE.match(line)
        line_indent = len(line) - len(line.lstrip())
        if match and (indent is None or line_indent <= indent):
            indent = line_indent
            names = [n.strip() for n in match.group(2).split(",") if n.strip()]
            for name in names:
                params[name] = match.group(3).strip()
        elif names and line.strip():
            for name in names:
                params[name] = f"{params[name]} {line.strip()}".strip()
    text = "\n".join(description).split("\0")[0].strip()
    return summary, text, params


def _strip_optional(annotation: Any) -> Any:
    """`T | None` -> T (anything else unchanged)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _scalar(annotation: Any, where: str) -> dict[str, Any]:
    """argparse `type` / `choices` for one value of `annotation`."""
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        return {"type": type(choices[0]), "choices": list(choices)}
    if annotation in SCALARS:
        return {"type": annotation}
    raise TypeError(f"{where}: cannot turn annotation {annotation!r} into a command-line argument")


class CollectValues(argparse.Action):
    """One or more values, and repeating the option adds more (`--image a b --image c`); given values
    replace the default rather than extend it."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        current = [] if current is self.default or current is None else current
        setattr(namespace, self.dest, [*current, *values])


def argument_spec(parameter: inspect.Parameter, annotation: Any, where: str) -> dict[str, Any]:
    """The `add_argument` keywords (without the flag and help) for one parameter."""
    annotation = _strip_optional(annotation)
    origin = typing.get_origin(annotation)
    if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
        return {"nargs": "*", **_scalar(annotation, where)}
    if annotation is bool:
        if parameter.default is True:
            return {"action": argparse.BooleanOptionalAction, "default": True}
        return {"action": "store_true"}
    if origin in (list, tuple, Sequence, typing.Sequence) or annotation in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis] or [str]
        return {"nargs": "+", "action": CollectValues, **_scalar(args[0], where)}
    return _scalar(annotation, where)


def option_flag(name: str) -> str:
    """The option that stands for parameter `name`: `image_folder` -> `--image-folder`."""
    return "--" + name.replace("_", "-")


def add_function_arguments(parser: argparse.ArgumentParser, function: Callable) -> None:
    """Add one argument per parameter of `function` to `parser` (rules in the module docstring)."""
    where = f"{function.__module__}.{function.__qualname__}"
    hints = typing.get_type_hints(function)
    _, _, helps = parse_docstring(function)
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            raise TypeError(f"{where}: **{name} cannot be a command-line argument; name each option")
        if name not in hints:
            raise TypeError(f"{where}: parameter '{name}' has no type annotation")
        spec = argument_spec(parameter, hints[name], f"{where}({name})")
        text = helps.get(name, "")
        has_default = parameter.default is not inspect.Parameter.empty
        if has_default and parameter.default not in (None, False, ()) and spec.get("action") is not argparse.BooleanOptionalAction:
            text = f"{text.rstrip('.')} (default: {_show(parameter.default)})".strip()
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            parser.add_argument(name, help=text, **spec)
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            parser.add_argument(name, help=text, default=[], **spec)
        else:
            if has_default and "default" not in spec:
                spec["default"] = parameter.default
            parser.add_argument(option_flag(name), dest=name, required=not has_default, help=text or None, **spec)


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def call_with_namespace(function: Callable, namespace: argparse.Namespace) -> Any:
    """Call `function` with the values argparse parsed for its parameters."""
    positional, keywords = [], {}
    for name, parameter in inspect.signature(function).parameters.items():
        value = getattr(namespace, name)
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            positional.append(value)
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            positional.extend(value)
        else:
            keywords[name] = value
    return function(*positional, **keywords)


def takes_extra_words(function: Callable) -> str | None:
    """The name of `function`'s `*args` parameter, which collects positional words given after options."""
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return name
    return None
