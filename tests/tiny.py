"""Tiny models shared by the tests. Everything is built from configs offline; seeds are fixed."""

from __future__ import annotations

import torch
from transformers import (
    SiglipImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from wings import WingsForConditionalGeneration
from wings.data.tokenizer import train_chat_tokenizer

IMAGE_TOKEN_ID = 5
VOCAB = 120
IMAGE_SIZE, PATCH = 32, 16  # 4 image tokens per image


def tiny_llm(family: str = "qwen2", seed: int = 0):
    torch.manual_seed(seed)
    common = dict(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=3,
        intermediate_size=96,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
    )
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**common)).eval()
    raise ValueError(family)


def tiny_vision(family: str = "siglip", seed: int = 1):
    torch.manual_seed(seed)
    common = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    if family == "siglip":
        return SiglipVisionModel(SiglipVisionConfig(**common)).eval()
    return CLIPVisionModel(CLIPVisionConfig(**common)).eval()


def tiny_wings(llm_family="qwen2", vision_family="siglip", **settings) -> WingsForConditionalGeneration:
    llm, vision = tiny_llm(llm_family), tiny_vision(vision_family)
    settings.setdefault("learner_rank", 8)
    torch.manual_seed(2)
    return WingsForConditionalGeneration.from_llm_and_vision(llm, vision, image_token_id=IMAGE_TOKEN_ID, **settings).eval()


def randomize_learners(model: WingsForConditionalGeneration, std: float = 0.2, seed: int = 3) -> None:
    """Give every learner and router non-zero weights so that learner paths matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.wings_layers:
            for module in (layer.visual_learner, layer.textual_learner, layer.router):
                for p in module.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
    if not model.training:
        model.eval()  # packs the learners' inference weights again (wings.modeling.packing)


def image_prompt(text_before: list[int], text_after: list[int], n_images: int = 1, seq: int = 4) -> list[int]:
    ids = list(text_before)
    for _ in range(n_images):
        ids += [IMAGE_TOKEN_ID] * seq + [7]
    return ids + list(text_after)


# `wings train` overrides for a few seconds' run on a tiny model (fp32, no checkpointing, no intermediate saves).
FAST_TRAINING = ["optim.batch_size=4", "optim.gradient_accumulation_steps=1", "optim.bf16=false",
                 "optim.gradient_checkpointing=false", "optim.save_steps=100", "optim.logging_steps=1"]

HUB_COLOURS = ("red", "green", "blue", "yellow")


def make_tiny_hub(root):
    """Save a tiny Qwen2 LLM (with an offline tokenizer) and a SigLIP tower (with its image processor)."""
    corpus = [f"what colour is the image? {c}. hello how are you? fine thanks." for c in HUB_COLOURS] * 10
    tokenizer = train_chat_tokenizer(corpus, vocab_size=300)
    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(
        Qwen2Config(
            hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
            intermediate_size=64, vocab_size=len(tokenizer), max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    )
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    vision = SiglipVisionModel(
        SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16)
    )
    vision.save_pretrained(root / "vision")
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "vision")
    return root


def save_hub_wings(hub, folder, learner_rank: int = 4):
    """Build a WINGS model (untrained learners) from `make_tiny_hub`'s LLM and tower; save it with its processor."""
    from transformers import AutoImageProcessor, AutoTokenizer

    from wings.processing import WingsProcessor

    tokenizer = AutoTokenizer.from_pretrained(hub / "llm")
    model = WingsForConditionalGeneration.from_llm_and_vision(str(hub / "llm"), str(hub / "vision"),
                                                              tokenizer=tokenizer, learner_rank=learner_rank)
    processor = WingsProcessor(AutoImageProcessor.from_pretrained(hub / "vision"), tokenizer,
                               image_seq_length=model.config.image_seq_length)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny_processor(corpus, image_size: int = IMAGE_SIZE, image_seq_length: int = 4, tokenizer=None):
    """A WingsProcessor over an offline tokenizer trained on `corpus` and a PIL SigLIP image processor."""
    from wings.processing import WingsProcessor

    return WingsProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer if tokenizer is not None else train_chat_tokenizer(corpus, vocab_size=400),
        image_seq_length=image_seq_length,
    )


# --------------------------------------------------------------------------------------------------
# One tiny decoder per supported family, each with the family's real differences switched on (and a
# learner head width d/H that differs from the LLM's head_dim where the family allows it).
SLIDING_WINDOW = 6  # shorter than the test prompts, so windows matter
FAMILY_SETTINGS = {
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        head_dim=32, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, mlp_only_layers=[1])),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        head_dim=24, sliding_window=SLIDING_WINDOW, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
        query_pre_attn_scalar=20)),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=32, sliding_window=SLIDING_WINDOW, query_pre_attn_scalar=20,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict()),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict()),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(no_rope_layers=[1, 0, 1])),
    "granite": ("GraniteConfig", "GraniteForCausalLM", dict(
        embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=2.0)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=SLIDING_WINDOW)),
    "ministral": ("MinistralConfig", "MinistralForCausalLM", dict(head_dim=16, sliding_window=SLIDING_WINDOW)),
}
FAMILIES = tuple(FAMILY_SETTINGS)


def tiny_family_llm(family: str, seed: int = 0, vocab_size: int = VOCAB):
    """A tiny causal LM of `family` (a key of FAMILY_SETTINGS) with random weights, eval mode."""
    import transformers

    config_name, model_name, extra = FAMILY_SETTINGS[family]
    config = getattr(transformers, config_name)(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3, intermediate_size=96,
        vocab_size=vocab_size, max_position_embeddings=256, pad_token_id=0, eos_token_id=2, bos_token_id=1,
        tie_word_embeddings=False, **extra,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # norms start at the identity; random ones make a misplaced norm visible
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def tiny_family_wings(family: str, vision_family: str = "siglip", **settings) -> WingsForConditionalGeneration:
    llm, vision = tiny_family_llm(family), tiny_vision(vision_family)
    settings.setdefault("learner_rank", 8)
    torch.manual_seed(2)
    return WingsForConditionalGeneration.from_llm_and_vision(llm, vision, image_token_id=IMAGE_TOKEN_ID, **settings).eval()


def tiny_siglip2(seed: int = 1):
    """A tiny NaFlex SigLIP 2 tower whose native grid is 2 x 2 patches of 16: square 32-pixel images, 4 tokens."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    torch.manual_seed(seed)
    config = Siglip2VisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                 patch_size=PATCH, num_patches=(IMAGE_SIZE // PATCH) ** 2)
    return Siglip2VisionModel(config).eval()


SAVED_CORPUS = [
    "what colour is the image? red green blue yellow. hello how are you? fine thanks.",
    "Which statement is true? The answer is B. describe the picture: a red circle.",
] * 10


def tiny_saved_llm(tokenizer, seed: int = 0) -> Qwen2ForCausalLM:
    """The LLM of the saved tiny models: a 2-layer Qwen2 over `tokenizer`'s vocabulary, eval mode."""
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=64,
        vocab_size=len(tokenizer), max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )).eval()


def wings_for_processor(processor, seed: int = 0, randomize: bool = True, **settings) -> WingsForConditionalGeneration:
    """A tiny WINGS model over `processor`'s tokenizer and image token (`tiny_saved_llm`, a one-layer SigLIP,
    learner rank 4), with non-zero learners unless randomize=False (so that the learner paths matter)."""
    llm = tiny_saved_llm(processor.tokenizer, seed)
    torch.manual_seed(seed + 1)
    vision = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH,
    )).eval()
    model = WingsForConditionalGeneration.from_llm_and_vision(
        llm, vision, image_token_id=processor.image_token_id, learner_rank=4, **settings
    ).eval()
    if randomize:
        randomize_learners(model, seed=seed + 2)
    return model


def save_tiny_wings(path, seed: int = 0, processor=None, **settings):
    """A saved WINGS directory (model with non-zero learners + processor), as `wings train` writes it.

    processor: the one to save with the model (default: `tiny_processor(SAVED_CORPUS)`); `settings`: further
    `WingsConfig` fields (e.g. image_layout="anyres"), which the saved processor follows."""
    from wings.processing import WingsProcessor, processor_image_settings

    processor = processor if processor is not None else tiny_processor(SAVED_CORPUS)
    model = wings_for_processor(processor, seed, **settings)
    if settings:
        processor = WingsProcessor(processor.image_processor, processor.tokenizer,
                                   **processor_image_settings(model.config))
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
