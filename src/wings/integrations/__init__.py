"""Adapters that let the field's tools run WINGS models.

`lmms_eval`: the "wings" model for lmms-eval, registered through lmms-eval's entry-point group
`lmms_eval.models` (see `lmms_eval_manifest`); `lmms-eval --model wings --model_args pretrained=DIR`.
"""

from __future__ import annotations

LMMS_EVAL_MODEL_ID = "wings"
LMMS_EVAL_CLASS_PATH = "wings.integrations.lmms_eval.WingsLMMs"


def lmms_eval_manifest():
    """The `ModelManifest` lmms-eval loads from our `lmms_eval.models` entry point.

    Kept here, away from the model class, so that lmms-eval can read it while its model registry is
    being built without importing the model code.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=LMMS_EVAL_MODEL_ID, simple_class_path=LMMS_EVAL_CLASS_PATH)
