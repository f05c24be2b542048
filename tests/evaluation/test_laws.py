"""MLLM-LAWS: span masses against closed forms and HF eager attention, WINGS and HF LLaVA, files and plots."""

from __future__ import annotations

import json
import logging
import weakref

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import (
    FAMILIES,
    IMAGE_TOKEN_ID,
    image_prompt,
    randomize_learners,
    save_tiny_wings,
    tiny_family_llm,
    tiny_family_wings,
    tiny_llm,
    tiny_vision,
    tiny_wings,
)
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    SiglipImageProcessorPil,
)

import wings.evaluation.laws as laws_module
from wings import WingsForConditionalGeneration
from wings.errors import UnsupportedModelError
from wings.data.tokenizer import train_chat_tokenizer
from wings.evaluation.laws import (
    LawsRecorder,
    attention_weights,
    compute_laws,
    decoder_layers,
    find_spans,
    laws_for_sample,
    llava_laws_samples,
    run_laws,
    run_laws_compare,
)
from wings.cli import main
from wings.evaluation.inputs import pixel_values as prompt_pixels
from wings.evaluation.inputs import prompt_ids
from wings.evaluation.laws_plots import plot_laws_compare, write_laws
from wings.evaluation.laws_stats import SPANS, LawsResult, SpanMasses, attention_shift, pearson_per_sample
from wings.processing import WingsProcessor

BEFORE, AFTER = [1, 10, 11, 12, 13], [20, 21, 22]


def naive_masses(attn: torch.Tensor, spans: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
    """Loop-level reference of a^l(S): attn [B, H, T, T] (one layer), spans [B, 3, T], valid [B, T] -> [B, 3]."""
    batch, heads, length, _ = attn.shape
    out = np.zeros((batch, 3))
    w = attn.double().mean(1)
    for b in range(batch):
        for k in range(3):
            for i in range(length):
                if valid[b, i]:
                    out[b, k] += float(sum(w[b, i, j] for j in range(length) if spans[b, k, j]))
    return out


def uniform_closed_form(span_mask: list[bool], valid: list[bool]) -> float:
    """a(S) when every real query attends uniformly to the real keys at or before it."""
    total = 0.0
    for i in range(len(valid)):
        if not valid[i]:
            continue
        visible = [j for j in range(i + 1) if valid[j]]
        total += sum(1 for j in visible if span_mask[j]) / len(visible)
    return total


def zero_queries_and_keys(model) -> None:
    with torch.no_grad():
        for layer in decoder_layers(model):
            attn = layer.decoder_layer.self_attn if hasattr(layer, "decoder_layer") else layer.self_attn
            for proj in (attn.q_proj, attn.k_proj):
                proj.weight.zero_()
                if proj.bias is not None:
                    proj.bias.zero_()


def pixels(n: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# spans
def test_spans_first_image_padding_and_excluded_tokens():
    # pad | 1 9 10 | img img img img | 7 11 | img img img img | 7 12 9   (positions 0..16)
    ids = image_prompt([1, 9, 10], [12, 9], n_images=2)
    ids = [0] + ids[:8] + [11] + ids[8:]
    mask = [0] + [1] * (len(ids) - 1)
    spans = find_spans(torch.tensor([ids]), IMAGE_TOKEN_ID, torch.tensor([mask]), 4, exclude_special_tokens={9})[0]
    positions = [torch.nonzero(spans[k]).flatten().tolist() for k in range(3)]
    assert positions[0] == [1, 3]  # padding and the excluded id 9 are out
    assert positions[1] == [4, 5, 6, 7]  # the first image only
    assert positions[2] == [8, 9, 14, 15]  # the second image (10..13) and the trailing 9 are in no span
    with pytest.raises(ValueError, match="row 0: no image token"):
        find_spans(torch.tensor([[1, 2, 3]]), IMAGE_TOKEN_ID)


def test_adjacent_images_are_split_by_tokens_per_image():
    ids = torch.tensor([[1] + [IMAGE_TOKEN_ID] * 8 + [2]])
    spans = find_spans(ids, IMAGE_TOKEN_ID, tokens_per_image=4)[0]
    assert spans[1].nonzero().flatten().tolist() == [1, 2, 3, 4]
    assert spans[2].nonzero().flatten().tolist() == [9]


# --------------------------------------------------------------------------------------------------
# exact values
def test_uniform_attention_has_the_closed_form(llm_family):
    """q = k = 0: every query attends uniformly to the visible keys, in every layer, learners or not."""
    model = tiny_wings(llm_family)
    randomize_learners(model)
    zero_queries_and_keys(model)
    long = image_prompt(BEFORE, AFTER)
    short = image_prompt([1, 10], [20])
    result = compute_laws(
        model, None, [{"input_ids": long, "pixel_values": pixels()}, {"input_ids": short, "pixel_values": pixels()}],
        batch_size=2, progress=False,
    )
    for row, ids in enumerate([long, short]):
        spans = find_spans(torch.tensor([ids]), IMAGE_TOKEN_ID, tokens_per_image=4)[0]
        expected = [uniform_closed_form(spans[k].tolist(), [True] * len(ids)) for k in range(3)]
        for layer in range(result.num_layers):
            np.testing.assert_allclose(result.curves[row, layer], expected, rtol=1e-5)
    # every real query's weights sum to 1: the three spans share T when they cover all tokens
    np.testing.assert_allclose(result.curves[0].sum(-1), len(long), rtol=1e-5)
    assert result.span_tokens.tolist() == [[5, 4, 4], [2, 4, 2]]


# Every family of wings.families: Llama and Qwen2 from tiny_llm, the others with their differences switched on
# (q/k norms, fused qkv, softcap, sliding windows shorter than the prompts, NoPE layers, multipliers).
ALL_LLMS = ("llama", "qwen2", *FAMILIES)
# Left padding in row 0 (its padding keys would be visible without the mask); 13 tokens, longer than the window.
PADDED_IDS = torch.tensor([[0, 0, 1, 30, 31, 9, 9, 9, 9, 32, 33, 36, 37], [1, 30, 31, 34, 9, 9, 9, 9, 32, 33, 35, 36, 37]])


def any_llm(name: str):
    return tiny_llm(name) if name in ("llama", "qwen2") else tiny_family_llm(name)


def eager_reference(llm, ids: torch.Tensor, mask: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], dict]:
    """HF's own eager attention weights of every layer ([B, H, T, T] each) and each layer's inputs."""
    llm.set_attn_implementation("eager")
    inputs = {}

    def capture(index, module, args, kwargs):
        inputs[index] = (args[0] if args else kwargs["hidden_states"], kwargs)

    handles = [
        layer.register_forward_pre_hook(lambda m, a, k, i=i: capture(i, m, a, k), with_kwargs=True)
        for i, layer in enumerate(decoder_layers(llm))
    ]
    with torch.no_grad():
        reference = llm(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    for handle in handles:
        handle.remove()
    assert len(reference) == len(inputs) == llm.config.num_hidden_layers
    return reference, inputs


@pytest.mark.parametrize("name", ALL_LLMS)
def test_recomputed_weights_equal_hf_eager_weights(name):
    llm = any_llm(name)
    ids, mask = PADDED_IDS, (PADDED_IDS != 0).long()
    reference, inputs = eager_reference(llm, ids, mask)
    real = mask.bool()[:, None, :, None]  # rows of padding queries are irrelevant to LAWS
    for index, layer in enumerate(decoder_layers(llm)):
        hidden, kwargs = inputs[index]
        position_embeddings = kwargs.get("position_embeddings")
        with torch.no_grad():
            ours = attention_weights(layer, hidden, position_embeddings, kwargs["attention_mask"])
            # the masks other kernels hand a layer: a 2D padding mask (flash attention: the layer's sliding
            # window is then LAWS' to apply), a 4D bool mask (SDPA)
            from_2d = attention_weights(layer, hidden, position_embeddings, mask)
            from_bool = attention_weights(layer, hidden, position_embeddings, kwargs["attention_mask"] == 0)
        for weights in (ours, from_2d, from_bool):
            torch.testing.assert_close(weights * real, reference[index] * real, rtol=1e-5, atol=1e-6)


def test_no_mask_is_plain_causal(llm_family):
    """No mask at all: plain causal, as SDPA passes it for unpadded batches."""
    llm = tiny_llm(llm_family)
    llm.set_attn_implementation("eager")
    ids = PADDED_IDS[1:]
    with torch.no_grad():
        unpadded = llm(input_ids=ids, output_attentions=True).attentions[0]
        hidden = llm.model.embed_tokens(ids)
        cos_sin = llm.model.rotary_emb(hidden, torch.arange(ids.shape[1])[None])
        torch.testing.assert_close(attention_weights(decoder_layers(llm)[0], hidden, cos_sin, None), unpadded)


# Gemma 2's HF model refuses SDPA (its softcap): eager only.
@pytest.mark.parametrize(
    "name, implementation",
    [(n, i) for n in ALL_LLMS for i in ("eager", "sdpa") if (n, i) != ("gemma2", "sdpa")],
)
def test_every_family_matches_naive_masses_of_hf_eager_attention(name, implementation):
    """The recorder on each family's plain LLM (SDPA or eager) equals a loop over HF's eager weights, with padding."""
    llm = any_llm(name)
    ids, mask = PADDED_IDS, (PADDED_IDS != 0).long()
    spans = find_spans(ids, 9, mask, tokens_per_image=4)
    reference, _ = eager_reference(llm, ids, mask)
    expected = np.stack([naive_masses(a, spans, mask.bool()) for a in reference], axis=1)
    llm.set_attn_implementation(implementation)
    with LawsRecorder(llm) as recorder, torch.no_grad():
        recorder.prepare(spans, mask)
        llm(input_ids=ids, attention_mask=mask)
        ours = recorder.masses()
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    # nothing stays on the layers afterwards
    assert all(not layer._forward_pre_hooks for layer in decoder_layers(llm))


def test_an_unknown_family_is_refused_by_name():
    llm = tiny_llm("llama")
    llm.config.model_type = "mystery"  # the attention modules share the LLM's config
    with pytest.raises(UnsupportedModelError, match="decoder layer 0 .*'mystery' is not supported"):
        LawsRecorder(llm)


@pytest.mark.parametrize("name", ["qwen2", "llama", "gemma3_text", "phi3", "gemma2", "olmo2"])
def test_wings_layers_use_the_wrapped_attention(name):
    """On WINGS with non-zero learners, each layer's masses equal HF's own eager attention on that layer's input."""
    model = tiny_wings(name) if name in ("llama", "qwen2") else tiny_family_wings(name)
    randomize_learners(model)
    model.language_model.set_attn_implementation("eager")
    assert model.wings_layers, "the tiny WINGS model should have wrapped layers"
    captured = {}

    def capture(index, module, args, kwargs):
        captured[index] = (args[0] if args else kwargs["hidden_states"], kwargs)

    layers = decoder_layers(model)
    handles = [
        layer.register_forward_pre_hook(lambda m, a, k, i=i: capture(i, m, a, k), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    ids = image_prompt(BEFORE, AFTER)
    ours = laws_for_sample(model, torch.tensor(ids), pixels())
    for handle in handles:
        handle.remove()
    spans = find_spans(torch.tensor([ids]), IMAGE_TOKEN_ID, tokens_per_image=4)
    valid = torch.ones(1, len(ids), dtype=torch.bool)
    for index, layer in enumerate(layers):
        hidden, kwargs = captured[index]
        normed = hidden if name == "olmo2" else layer.input_layernorm(hidden)  # OLMo 2 norms after the attention
        with torch.no_grad():  # HF's own attention forward, eager, on the layer's real input
            _, weights = layer.self_attn(
                hidden_states=normed,
                position_embeddings=kwargs["position_embeddings"],
                attention_mask=kwargs["attention_mask"],
            )
        np.testing.assert_allclose(ours[index], naive_masses(weights, spans, valid)[0], rtol=1e-5, atol=1e-6)


def test_batching_equals_one_by_one():
    model = tiny_wings("qwen2")
    randomize_learners(model)
    samples = [
        {"input_ids": image_prompt(BEFORE, AFTER), "pixel_values": pixels(1, 0), "id": "a"},
        {"input_ids": image_prompt([1, 10], [20, 21, 22, 23, 24, 25]), "pixel_values": pixels(1, 1), "id": "b"},
        {"input_ids": image_prompt([1], [20, 21], n_images=2), "pixel_values": pixels(2, 2), "id": "c"},
    ]
    one = compute_laws(model, None, samples, batch_size=1, progress=False)
    three = compute_laws(model, None, samples, batch_size=3, progress=False)
    np.testing.assert_allclose(three.curves, one.curves, rtol=1e-4, atol=1e-5)
    assert one.sample_ids == ["a", "b", "c"]
    assert compute_laws(model, None, samples, limit=2, progress=False).n_samples == 2
    with pytest.raises(ValueError, match="sample 0: no image token"):
        compute_laws(model, None, [{"input_ids": [1, 2, 3]}], progress=False)


def test_hooks_keep_one_layer_of_weights_at_most(monkeypatch):
    """Each layer's weights are dead before the next layer's are computed; the recorder keeps [B, 3] per layer."""
    alive: list[weakref.ref] = []
    real = laws_module.attention_weights

    def tracked(*args, **kwargs):
        assert all(ref() is None for ref in alive), "a previous layer's attention weights are still alive"
        weights = real(*args, **kwargs)
        alive.append(weakref.ref(weights))
        return weights

    monkeypatch.setattr(laws_module, "attention_weights", tracked)
    model = tiny_wings("llama")
    ids = torch.tensor([image_prompt(BEFORE, AFTER)] * 2)
    spans = find_spans(ids, IMAGE_TOKEN_ID, tokens_per_image=4)
    with LawsRecorder(model) as recorder, torch.no_grad():
        recorder.prepare(spans, torch.ones_like(ids))
        model(input_ids=ids, pixel_values=pixels(2), use_cache=False)
        assert len(alive) == recorder.num_layers == model.config.text_config.num_hidden_layers
        assert [tuple(r.shape) for r in recorder.records] == [(2, 3)] * recorder.num_layers
        assert recorder.masses().shape == (2, recorder.num_layers, 3)


def test_output_attentions_is_never_requested():
    model = tiny_wings("qwen2")
    seen = []
    handle = model.language_model.register_forward_pre_hook(
        lambda m, a, k: seen.append(bool(k.get("output_attentions"))), with_kwargs=True
    )
    laws_for_sample(model, torch.tensor(image_prompt(BEFORE, AFTER)), pixels())
    handle.remove()
    assert seen == [False]


# --------------------------------------------------------------------------------------------------
# HF LLaVA
def tiny_llava(vocab_size: int = 120, image_token_id: int = IMAGE_TOKEN_ID) -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=16
    )
    text = LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3, intermediate_size=96,
        vocab_size=vocab_size, max_position_embeddings=256, pad_token_id=0,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=image_token_id, image_seq_length=4,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    return LlavaForConditionalGeneration(config).eval()


def test_hf_llava_matches_its_eager_attentions():
    model = tiny_llava()
    ids = torch.tensor([image_prompt(BEFORE, AFTER)])
    ours = laws_for_sample(model, ids, pixels())
    model.set_attn_implementation("eager")
    with torch.no_grad():
        reference = model(input_ids=ids, pixel_values=pixels(), output_attentions=True).attentions
    spans = find_spans(ids, IMAGE_TOKEN_ID, tokens_per_image=4)
    valid = torch.ones_like(ids, dtype=torch.bool)
    expected = np.stack([naive_masses(a, spans, valid)[0] for a in reference])
    assert ours.shape == (3, 3)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_hf_llava_processor_samples():
    tokenizer = train_chat_tokenizer(["what is in the picture? a red square. hello"] * 10, vocab_size=300)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=16,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    model = tiny_llava(vocab_size=len(tokenizer), image_token_id=image_token_id)
    image = Image.new("RGB", (40, 24), (200, 30, 30))
    samples = [
        {"text": "hello <image> what is in the picture?", "images": [image]},
        {"text": "<image> hello", "images": [image]},
    ]
    result = compute_laws(model, processor, samples, progress=False)
    assert result.curves.shape == (2, 3, 3)
    assert result.span_tokens[:, 1].tolist() == [4, 4]
    assert result.span_tokens[1, 0] == 0 and result.n_skipped == 1  # nothing before the image: no correlation


# --------------------------------------------------------------------------------------------------
# statistics
def test_pearson_and_shift():
    rng = np.random.default_rng(0)
    before = rng.random(6)
    curves = np.stack([np.stack([before, rng.random(6), before], axis=1)] * 2)
    np.testing.assert_allclose(pearson_per_sample(curves), [1.0, 1.0])
    assert attention_shift(pearson_per_sample(curves)) == pytest.approx(0.0)
    flipped = curves.copy()
    flipped[:, :, 2] = -before + 3  # perfectly anti-correlated
    assert attention_shift(pearson_per_sample(flipped)) == pytest.approx(2.0)
    for _ in range(20):
        assert 0.0 <= attention_shift(rng.uniform(-1, 1, size=5)) <= 2.0
    assert attention_shift([0.2, np.nan, 0.4]) == pytest.approx(0.7)
    assert np.isnan(attention_shift([np.nan]))
    sample = SpanMasses.from_array(curves[0], (3, 4, 5))
    assert sample.pearson == pytest.approx(1.0) and sample.as_array().shape == (6, 3)


def test_constant_curves_are_skipped_and_reported(caplog):
    model = tiny_wings("qwen2")
    samples = [
        {"input_ids": image_prompt(BEFORE, AFTER), "pixel_values": pixels()},
        {"input_ids": image_prompt([], AFTER), "pixel_values": pixels()},  # no text before the image
    ]
    with caplog.at_level(logging.WARNING, logger="wings.evaluation.laws"):
        result = compute_laws(model, None, samples, progress=False)
    assert "1 of 2 samples" in caplog.text
    assert result.n_skipped == 1 and np.isnan(result.pearson[1]) and np.isfinite(result.pearson[0])
    assert result.attention_shift == pytest.approx(1 - result.pearson[0])
    data = result.to_json()
    assert data["pearson"][1] is None and data["n_skipped"] == 1
    json.dumps(data, allow_nan=False)


def synthetic_result(seed: int = 0, n: int = 4, layers: int = 5) -> LawsResult:
    rng = np.random.default_rng(seed)
    return LawsResult(rng.random((n, layers, 3)) * 10, [f"s{i}" for i in range(n)], np.full((n, 3), 4))


def test_json_keys_and_plots(tmp_path):
    result = synthetic_result()
    data = result.to_json()
    assert set(data) == {"layers", "spans", "mean", "std", "pearson", "attention_shift", "n_samples", "n_skipped"}
    assert data["layers"] == [1, 2, 3, 4, 5] and data["spans"] == list(SPANS)
    assert len(data["mean"]["after"]) == 5 and len(data["pearson"]) == 4
    assert 0.0 <= data["attention_shift"] <= 2.0
    paths = write_laws(result, tmp_path / "out", title="tiny")
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(data))
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    compare = plot_laws_compare({"a": result, "b": synthetic_result(1, layers=7)}, tmp_path / "cmp.png")
    assert compare.stat().st_size > 1000


# --------------------------------------------------------------------------------------------------
# end to end from a saved model and LLaVA-format data
CORPUS = ["what colour is the image? red. hello how are you? fine thanks."] * 10


def save_wings(folder, llm, tokenizer, randomize: bool = True):
    """A saved WINGS directory (non-zero learners unless randomize=False) and its processor, as `wings train`
    writes it."""
    model = WingsForConditionalGeneration.from_llm_and_vision(llm, tiny_vision(), tokenizer=tokenizer, learner_rank=4)
    if randomize:
        randomize_learners(model)
    processor = WingsProcessor(
        SiglipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer,
        image_seq_length=model.config.image_seq_length,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_llava_data(root):
    """Three image samples (image between two text turns), one text-only and one with a late image."""
    images = root / "images"
    images.mkdir()
    for i, color in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200)]):
        Image.new("RGB", (40, 24), color).save(images / f"{i}.png")
    samples = [
        {"id": f"v{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "hello how are you?\n<image>\nwhat colour is the image?"},
            {"from": "gpt", "value": "red."}]}
        for i in range(3)
    ]
    samples.insert(1, {"id": "text", "conversations": [
        {"from": "human", "value": "hello how are you?"}, {"from": "gpt", "value": "fine thanks."}]})
    samples.append({"id": "late", "image": "0.png", "conversations": [
        {"from": "human", "value": "hello"}, {"from": "gpt", "value": "fine"},
        {"from": "human", "value": "<image>\nwhat colour?"}, {"from": "gpt", "value": "red."}]})
    data = root / "data.json"
    data.write_text(json.dumps(samples))
    return data, images


@pytest.fixture(scope="module")
def saved_wings(tmp_path_factory):
    root = tmp_path_factory.mktemp("laws")
    save_tiny_wings(root / "model")
    return root, *write_llava_data(root)


def test_run_laws_writes_json_and_plot(saved_wings, tmp_path):
    root, data, images = saved_wings
    result = run_laws(root / "model", data, images, tmp_path / "laws", limit=2, progress=False)
    assert result.n_samples == 2 and result.sample_ids[0].startswith("data.json: sample 0")
    written = json.loads((tmp_path / "laws" / "laws.json").read_text())
    assert written["n_samples"] == 2 and 0.0 <= written["attention_shift"] <= 2.0
    assert (tmp_path / "laws" / "laws.png").stat().st_size > 1000
    # all three image samples are used without a limit; text-only and late-image samples are not
    assert run_laws(root / "model", data, images, tmp_path / "all", progress=False).n_samples == 3


def test_run_laws_compare(saved_wings, tmp_path):
    root, data, images = saved_wings
    results = run_laws_compare([root / "model", root / "model"], data, images, tmp_path, limit=2, progress=False)
    assert list(results) == ["model", "model-2"]
    np.testing.assert_allclose(results["model"].curves, results["model-2"].curves)
    summary = json.loads((tmp_path / "laws_compare.json").read_text())
    assert set(summary) == {"model", "model-2"} and summary["model"]["n_samples"] == 2
    assert (tmp_path / "laws_compare.png").stat().st_size > 1000
    for name in results:  # each model's own files, as run_laws writes them
        own = json.loads((tmp_path / name / "laws.json").read_text())
        assert own == {k: v for k, v in summary[name].items() if k != "model_dir"}
        assert (tmp_path / name / "laws.png").stat().st_size > 1000


def test_laws_plot_ticks_are_whole_layers(tmp_path, monkeypatch):
    import wings.evaluation.laws_plots as laws_plots

    seen = {}

    def keep(fig, path, dpi=150):
        fig.canvas.draw()
        seen["ticks"] = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 4]
        return path

    monkeypatch.setattr(laws_plots, "save_figure", keep)
    laws_plots.plot_laws(synthetic_result(layers=4), tmp_path / "laws.png")
    assert seen["ticks"] and all(float(t).is_integer() for t in seen["ticks"]), seen["ticks"]


@pytest.mark.parametrize("family", ["gemma3_text", "phi3"])
def test_wings_laws_command_on_gemma3_and_phi3(family, tmp_path, capsys):
    """`wings laws` on a saved Gemma 3 / Phi-3 WINGS model. With zero learners the model computes what its LLM
    computes, so the curves it writes must equal LAWS of HF's own eager attention weights (output_attentions) of
    the plain Gemma3ForCausalLM / Phi3ForCausalLM fed the same prompts (image features in the image slots)."""
    tokenizer = train_chat_tokenizer(CORPUS, vocab_size=300)
    folder = save_wings(tmp_path / "model", tiny_family_llm(family, vocab_size=len(tokenizer)), tokenizer,
                        randomize=False)
    data, images = write_llava_data(tmp_path)
    main(["laws", "--model", str(folder), "--data", str(data), "--image-folder", str(images),
          "--output", str(tmp_path / "laws"), "--device", "cpu"])
    written = json.loads((tmp_path / "laws" / "laws.json").read_text())
    assert written["n_samples"] == 3 and written["layers"] == [1, 2, 3]
    assert "attention shift" in capsys.readouterr().out

    model = WingsForConditionalGeneration.from_pretrained(folder).eval()
    processor = WingsProcessor.from_pretrained(folder)
    llm = model.to_llm().eval()
    llm.set_attn_implementation("eager")
    image_id, per_image = model.config.image_token_id, model.config.image_seq_length
    curves = []
    for sample in llava_laws_samples(data, images, processor):
        ids = torch.tensor([prompt_ids(processor, sample["text"], sample["images"])])
        with torch.no_grad():
            features = model.get_image_features(prompt_pixels(processor, sample["images"]))
            embeds = llm.get_input_embeddings()(ids.masked_fill(ids == image_id, 0))
            embeds[ids == image_id] = features.reshape(-1, features.shape[-1])
            attentions = llm(inputs_embeds=embeds, output_attentions=True).attentions
        spans = find_spans(ids, image_id, tokens_per_image=per_image)
        valid = torch.ones_like(ids, dtype=torch.bool)
        curves.append(np.stack([naive_masses(a, spans, valid)[0] for a in attentions]))
    expected = np.mean(curves, axis=0)
    for k, span in enumerate(SPANS):
        np.testing.assert_allclose(written["mean"][span], expected[:, k], rtol=1e-4, atol=1e-5)
