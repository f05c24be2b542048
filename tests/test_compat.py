"""The transformers shims of `wings.compat`, on the installed release (5.19 in the serving env, newer in .venv)."""

import inspect
from types import SimpleNamespace

from transformers import TrainingArguments

from tiny import tiny_llm
from wings import compat


def test_cache_kwarg_and_layer_cache_follow_the_installed_release():
    llm = tiny_llm()
    name = compat.cache_kwarg(llm)
    assert name in inspect.signature(llm.forward).parameters and name in compat.CACHE_KWARGS
    kwargs = {"past_key_values": "old", "other": 1}
    assert compat.layer_cache(None, kwargs) == "old" and kwargs == {"other": 1}
    kwargs = {"other": 1}
    assert compat.layer_cache("new", kwargs) == "new" and kwargs == {"other": 1}


def test_attention_and_experts_implementation_are_set():
    config = tiny_llm().config
    compat.set_attn_implementation(config, "eager")
    assert config._attn_implementation == "eager"
    compat.set_experts_implementation(config, "eager")
    assert config._experts_implementation_internal == "eager"


def test_drop_weight_conversions_keeps_the_others():
    keep, legacy = SimpleNamespace(source_patterns=["a"]), SimpleNamespace(source_patterns=["legacy"])
    model = SimpleNamespace(_weight_conversions=[keep, legacy])
    compat.drop_weight_conversions(model, {"legacy"})
    assert model._weight_conversions == [keep]
    bare = SimpleNamespace()
    compat.drop_weight_conversions(bare, {"legacy"})
    assert not hasattr(bare, "_weight_conversions")


def test_generation_max_cache_len():
    cache = SimpleNamespace(layers=[SimpleNamespace(max_cache_len=8), SimpleNamespace(max_cache_len=32)])
    assert compat.generation_max_cache_len(SimpleNamespace(_previous_max_cache_length=40), cache) == 40
    assert compat.generation_max_cache_len(SimpleNamespace(), cache) == 32


def test_activation_checkpointing_flag_and_training_arguments():
    llm = tiny_llm()
    assert not compat.is_activation_checkpointing(llm)
    llm.gradient_checkpointing_enable()
    assert compat.is_activation_checkpointing(llm)
    arguments = compat.checkpointing_arguments(TrainingArguments, True)
    assert set(arguments) <= set(TrainingArguments.__dataclass_fields__)
    assert list(arguments.values()) == [True, {"use_reentrant": False}]


def test_compiled_chat_template_renders_as_the_tokenizer_does():
    from wings.compat import compiled_chat_template

    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    compiled = compiled_chat_template(template)
    assert compiled is not None  # the installed releases (5.19 and 5.25) have the private helper
    assert compiled.render(messages=[{"role": "user", "content": "hi"}]) == "user: hi\n"
