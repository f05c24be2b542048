"""The errors a user can fix: bad data, a bad config or recipe, an unsupported model, bad arguments.

Each names what is wrong and where (file, sample or row, field). The `wings` command line prints
them as one line, `error: <message>`, and exits non-zero; `--debug` (or `WINGS_DEBUG=1`) shows the
traceback. Any other exception is a bug and keeps its traceback.

This module imports nothing from the package, so every layer (config, data, evaluation, ...) can
derive its own error types from these.
"""

from __future__ import annotations


class WingsError(Exception):
    """Base of every error caused by the user's input rather than by a bug."""


class ConfigError(WingsError, ValueError):
    """A model config, recipe or setting is inconsistent; the message names the setting."""


class UnsupportedModelError(ConfigError):
    """An LLM or vision encoder of a family WINGS does not wrap."""


class UsageError(WingsError, ValueError):
    """Command arguments that do not fit together (e.g. neither of two alternatives given)."""


class UnsupportedLayerError(UnsupportedModelError, TypeError):
    """A decoder layer lacks a part its family's block layout needs (a TypeError too: the wrong module)."""


class ModelPathError(ConfigError):
    """A model argument that cannot be used: a path that does not exist, a directory that is not a saved
    model, unreadable weights, or a model of the wrong kind (an encoder given as the LLM, ...)."""


class OutputExistsError(UsageError):
    """The output directory holds a finished run or checkpoints, and neither resume nor overwrite was asked."""
