"""Presets: fixtures of the published backbone configs, full-size models on the meta device, parameter counts.

Counts are checked three ways: the meta-built model against the analytic formula, the formula's LLM and
tower numbers against the parameter counts the backbones' authors publish, and (for the branches the
presets do not reach) tiny real models against the formula.
"""

import json
from importlib import resources

import pytest
import torch

from tiny import FAMILIES, tiny_family_wings, tiny_wings
from wings import WingsForConditionalGeneration
from wings.presets import (
    PARAMETER_GROUPS,
    PRESETS,
    build_on_meta,
    count_parameters,
    expected_parameter_counts,
    fixture_config,
    fixture_ids,
    from_preset,
    get_preset,
    preset_config,
    preset_names,
)


@pytest.fixture(scope="module", params=list(PRESETS))
def meta_model(request) -> WingsForConditionalGeneration:
    return build_on_meta(request.param)


def test_registry_has_the_paper_sizes_and_current_equivalents():
    assert preset_names() == [
        "wings-base",
        "wings-pro",
        "wings-1.8b",
        "wings-qwen2.5-0.5b",
        "wings-qwen2.5-1.5b",
        "wings-qwen2.5-7b",
        "wings-llama3.1-8b",
        "wings-qwen3-0.6b",
        "wings-qwen3-1.7b",
        "wings-qwen3-4b",
        "wings-qwen3-8b",
        "wings-gemma3-1b",
        "wings-gemma3-4b",
        "wings-phi3-mini",
        "wings-olmo2-1b",
        "wings-smollm3-3b",
    ]
    base, pro = get_preset("wings-base"), get_preset("wings-pro")
    assert (pro.llm_id, pro.vision_id, pro.learner_rank) == (base.llm_id, base.vision_id, base.learner_rank)
    assert pro.data_mix != base.data_mix and "2M" in pro.data_mix
    assert base.llm_id == "Qwen/Qwen1.5-7B-Chat" and base.vision_id == "google/siglip-so400m-patch14-384"
    assert all(p.learner_rank == 64 for p in PRESETS.values())


def test_unknown_preset_is_named():
    with pytest.raises(KeyError, match="unknown WINGS preset 'wings-huge'.*wings-base"):
        preset_config("wings-huge")
    with pytest.raises(KeyError, match="no config fixture for 'org/missing'"):
        fixture_config("org/missing")


# (model_type, hidden, intermediate, layers, heads, kv heads, vocab, tied) as published on the hub
PUBLISHED_LLMS = {
    "Qwen/Qwen1.5-7B-Chat": ("qwen2", 4096, 11008, 32, 32, 32, 151936, False),
    "Qwen/Qwen1.5-1.8B-Chat": ("qwen2", 2048, 5504, 24, 16, 16, 151936, False),
    "Qwen/Qwen2.5-0.5B-Instruct": ("qwen2", 896, 4864, 24, 14, 2, 151936, True),
    "Qwen/Qwen2.5-1.5B-Instruct": ("qwen2", 1536, 8960, 28, 12, 2, 151936, True),
    "Qwen/Qwen2.5-7B-Instruct": ("qwen2", 3584, 18944, 28, 28, 4, 152064, False),
    "meta-llama/Llama-3.1-8B-Instruct": ("llama", 4096, 14336, 32, 32, 8, 128256, False),
    "Qwen/Qwen3-0.6B": ("qwen3", 1024, 3072, 28, 16, 8, 151936, True),
    "Qwen/Qwen3-1.7B": ("qwen3", 2048, 6144, 28, 16, 8, 151936, True),
    "Qwen/Qwen3-4B": ("qwen3", 2560, 9728, 36, 32, 8, 151936, True),
    "Qwen/Qwen3-8B": ("qwen3", 4096, 12288, 36, 32, 8, 151936, False),
    "google/gemma-3-1b-it": ("gemma3_text", 1152, 6912, 26, 4, 1, 262144, True),
    "google/gemma-3-4b-it": ("gemma3_text", 2560, 10240, 34, 8, 4, 262208, True),
    "microsoft/Phi-3-mini-4k-instruct": ("phi3", 3072, 8192, 32, 32, 32, 32064, False),
    "allenai/OLMo-2-0425-1B-Instruct": ("olmo2", 2048, 8192, 16, 16, 16, 100352, False),
    "HuggingFaceTB/SmolLM3-3B": ("smollm3", 2048, 11008, 36, 16, 4, 128256, True),
}


def test_fixtures_record_their_hub_id_and_published_shapes():
    assert set(fixture_ids()) == {*PUBLISHED_LLMS, "google/siglip-so400m-patch14-384"}
    for preset in PRESETS.values():
        assert {preset.llm_id, preset.vision_id} <= set(fixture_ids())
    for hub_id in fixture_ids():
        raw = json.loads((resources.files("wings.presets") / (hub_id.replace("/", "--") + ".json")).read_text())
        assert raw["_name_or_path"] == hub_id
        assert fixture_config(hub_id).name_or_path == hub_id
    for hub_id, expected in PUBLISHED_LLMS.items():
        c = fixture_config(hub_id)
        got = (c.model_type, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
               c.num_key_value_heads, c.vocab_size, c.tie_word_embeddings)
        assert got == expected, hub_id
    llama = fixture_config("meta-llama/Llama-3.1-8B-Instruct")
    assert llama.rope_parameters["rope_type"] == "llama3" and llama.rope_parameters["factor"] == 8.0
    assert llama.rope_parameters["rope_theta"] == 500000.0
    assert fixture_config("Qwen/Qwen1.5-7B-Chat").rope_parameters["rope_theta"] == 1000000.0
    gemma = fixture_config("google/gemma-3-4b-it")
    assert gemma.rope_parameters["sliding_attention"]["rope_theta"] == 10000.0
    assert gemma.rope_parameters["full_attention"] == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}
    assert gemma.layer_types[:6] == ["sliding_attention"] * 5 + ["full_attention"] and gemma.sliding_window == 1024
    assert fixture_config("HuggingFaceTB/SmolLM3-3B").no_rope_layers[:4] == [1, 1, 1, 0]
    siglip = fixture_config("google/siglip-so400m-patch14-384")
    assert siglip.model_type == "siglip_vision_model" and siglip.vision_use_head
    assert (siglip.hidden_size, siglip.intermediate_size, siglip.num_hidden_layers, siglip.num_attention_heads,
            siglip.image_size, siglip.patch_size) == (1152, 4304, 27, 16, 384, 14)


def test_preset_config_settings_and_overrides():
    config = preset_config("wings-base")
    assert config.image_seq_length == 729 and config.learner_rank == 64 and config.router == "segment"
    assert config.image_token_id == 151936 - 1
    assert config.text_config.name_or_path == "Qwen/Qwen1.5-7B-Chat"
    assert preset_config("wings-llama3.1-8b").image_token_id == 128255
    assert preset_config("wings-qwen2.5-0.5b").tie_word_embeddings
    custom = preset_config("wings-1.8b", image_token_id=151646, learner_layers=[0, 5], router="positional")
    assert custom.image_token_id == 151646 and custom.layers_with_learners == [0, 5]
    assert custom.router == "positional"


def test_meta_model_allocates_nothing_and_matches_the_formula(meta_model):
    assert all(p.device.type == "meta" for p in meta_model.parameters())
    assert meta_model.config.image_seq_length == 729
    assert count_parameters(meta_model) == expected_parameter_counts(meta_model.config)


# Parameter counts the backbones' publishers state (model cards), in billions.
PUBLISHED_LLM_SIZES = {
    "wings-base": 7.72,
    "wings-pro": 7.72,
    "wings-1.8b": 1.84,
    "wings-qwen2.5-0.5b": 0.49,
    "wings-qwen2.5-1.5b": 1.54,
    "wings-qwen2.5-7b": 7.61,
    "wings-llama3.1-8b": 8.03,
    "wings-qwen3-0.6b": 0.6,  # the Qwen3 cards round to one digit; non-embedding counts are checked below
    "wings-qwen3-1.7b": 1.7,
    "wings-qwen3-4b": 4.0,
    "wings-qwen3-8b": 8.2,
    "wings-gemma3-1b": 1.0,  # Gemma 3 report: 302M embedding + 698M non-embedding
    "wings-gemma3-4b": 3.884,  # Gemma 3 report: 675M embedding + 3,209M non-embedding (vision encoder apart)
    "wings-phi3-mini": 3.8,
    "wings-olmo2-1b": 1.48,
    "wings-smollm3-3b": 3.08,
}

# Non-embedding parameter counts of the Qwen3 cards, in billions.
QWEN3_NON_EMBEDDING = {"wings-qwen3-0.6b": 0.44, "wings-qwen3-1.7b": 1.4, "wings-qwen3-4b": 3.6, "wings-qwen3-8b": 6.95}


@pytest.mark.parametrize("name", list(PRESETS))
def test_llm_sizes_match_published_counts(name):
    config = preset_config(name)
    counts = expected_parameter_counts(config)
    rounded = name.startswith("wings-qwen3") or name == "wings-phi3-mini"  # published with one decimal
    assert counts["llm"] == pytest.approx(PUBLISHED_LLM_SIZES[name] * 1e9, rel=0.03 if rounded else 0.01)
    if name in QWEN3_NON_EMBEDDING:
        text = config.text_config
        embedding = text.vocab_size * text.hidden_size * (1 if text.tie_word_embeddings else 2)
        assert counts["llm"] - embedding == pytest.approx(QWEN3_NON_EMBEDDING[name] * 1e9, rel=0.03)
    # SigLIP so400m vision tower incl. its attention-pooling head: ~0.43B ("so400m" = the whole encoder).
    assert 0.40e9 <= counts["vision_tower"] <= 0.43e9


def test_wings_base_anchor_numbers():
    counts = count_parameters(build_on_meta("wings-base"))
    assert counts["llm"] == pytest.approx(7.72e9, rel=0.01)
    assert counts["visual_learners"] == counts["textual_learners"] == 32 * 8 * 4096 * 64
    assert counts["visual_learners"] + counts["textual_learners"] == 32 * 2 * 8 * 4096 * 64
    assert counts["projector"] == 1152 * 4096 + 4096 + 4096 * 4096 + 4096
    assert counts["router"] == 32 * (2 * 32 * 2 + 2)
    assert counts["total"] == sum(counts[g] for g in PARAMETER_GROUPS)


def test_tied_embeddings_count_once():
    model = build_on_meta("wings-qwen2.5-0.5b")
    assert model.language_model.lm_head.weight is model.language_model.model.embed_tokens.weight
    assert count_parameters(model)["llm"] == pytest.approx(0.49e9, rel=0.01)


@pytest.mark.parametrize(
    "llm_family, vision_family, settings",
    [
        ("qwen2", "siglip", {}),
        ("llama", "clip", {}),
        ("qwen2", "clip", dict(router="positional", router_max_positions=64)),
        ("llama", "siglip", dict(learner_layers=[1])),
    ],
)
def test_formula_on_tiny_real_models(llm_family, vision_family, settings):
    model = tiny_wings(llm_family, vision_family, **settings)
    assert count_parameters(model) == expected_parameter_counts(model.config)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "qwen3_moe"])
def test_formula_on_tiny_models_of_every_family(family):
    model = tiny_family_wings(family, learner_layers=[0, 2])
    assert count_parameters(model) == expected_parameter_counts(model.config)


def test_formula_follows_optional_biases_and_the_siglip_head():
    config = preset_config("wings-llama3.1-8b", learner_layers=[0])
    config.text_config.num_hidden_layers = 2
    config.text_config.attention_bias = True
    config.text_config.mlp_bias = True
    config.vision_config.num_hidden_layers = 1
    config.vision_config.vision_use_head = False
    with torch.device("meta"):
        model = WingsForConditionalGeneration(config)
    assert not hasattr(model.vision_tower, "head")
    assert model.language_model.model.layers[1].self_attn.o_proj.bias is not None
    assert count_parameters(model) == expected_parameter_counts(config)


def test_from_preset_names_the_backbones_it_could_not_load(tmp_path):
    llm, vision = str(tmp_path / "no-llm"), str(tmp_path / "no-vision")
    with pytest.raises(OSError, match=r"from_preset\('wings-1.8b'\): could not load the backbones .*no-llm"):
        from_preset("wings-1.8b", llm=llm, vision=vision)
