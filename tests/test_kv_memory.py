"""`wings.serving.kv_memory`: the KV-cache channels per token of WINGS in vLLM against its plain LLM."""

from wings.presets import preset_config
from wings.serving.kv_memory import gpu_head_size, kv_channels


def test_qwen2_7b_needs_eight_and_a_half_times_the_plain_llms_kv_memory():
    config = preset_config("wings-qwen2.5-7b")  # 28 layers, 28 query / 4 KV heads of 128, learners in every layer
    text = config.text_config
    assert (text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (28, 28, 4)
    assert len(set(config.layers_with_learners)) == 28 and config.learner_mode == "routed"
    channels = kv_channels(config)
    # Per layer: plain 2 * 4 * 128; main attention padded to 136 (128 + the image-flag channel, a multiple of 8);
    # learners 2 * 28 heads * 136 (128 + 2 mask/flag channels).
    assert channels.plain == 28 * 2 * 4 * 128
    assert channels.wings == 28 * (2 * 4 * 136 + 2 * 28 * 136)
    assert channels.ratio == (2 * 4 * 136 + 2 * 28 * 136) / (2 * 4 * 128)  # 8.5
    assert channels.method_ratio == 1 + 28 / 4  # the learners' own H heads next to the LLM's KV heads


def test_cpu_padding_and_layers_without_learners():
    config = preset_config("wings-qwen2.5-7b", learner_layers=[0, 1])
    cpu = {129: 160, 130: 160}.__getitem__  # vLLM's CPU attention head sizes around 128
    channels = kv_channels(config, cpu)
    assert channels.wings == 26 * 2 * 4 * 128 + 2 * (2 * 4 * 160 + 2 * 28 * 160)
    assert gpu_head_size(129) == 136 and gpu_head_size(64) == 64
