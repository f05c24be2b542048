"""Analytic costs: matmul FLOPs of a forward and values read by a cached decode step, WINGS and the plain LLM.

Checked against the models' parameter counts in tests/test_benchmarks.py; the rows print them beside what
they measure.
"""

from __future__ import annotations

from common import Shape


def forward_flops(shape: Shape, length: int, image_tokens: int, wings: bool) -> dict[str, float]:
    """Matmul FLOPs (2 per multiply-add) of one forward over `length` tokens, batch 1, all logits.

    Main self-attention scores and values count the causal half of the T x T square (T(T+1)/2 query-key
    pairs: causal SDPA/flash kernels skip the upper triangle); the learners' cross-attention counts the
    full T x N rectangles (an arbitrary boolean mask: no kernel skips blocks), N = image tokens for the
    visual learner and text tokens for the textual one. Learner K/V are projected once per key token.
    The segment router's extra value channel (image mass) is counted with its linear layer.
    """
    d, kv, h, r = shape.hidden, shape.kv_heads * shape.head_dim, shape.heads, shape.rank
    T, n_img = length, image_tokens
    n_txt = T - n_img
    pairs = T * (T + 1) / 2
    per_layer = {
        "attn_proj": 2 * T * d * (d + 2 * kv + d),
        "attn_scores_values": 2 * 2 * pairs * d,
        "mlp": 2 * T * d * shape.mlp * 3,
    }
    if wings:
        lowrank = 2 * d * r + 2 * r * d  # one token through a down (d -> r) and an up (r -> d) projection
        per_layer.update(
            learner_q_o=2 * 2 * T * lowrank,  # two learners, q and o over the T queries
            learner_k_v=2 * (n_img + n_txt) * lowrank,  # k and v over each learner's own keys
            learner_attention=2 * 2 * T * (n_img + n_txt) * d,  # T x N_img (visual) and T x N_text (textual)
            router=2 * pairs * h + 2 * T * (2 * h) * 2,  # image-mass value channel + Linear(2H -> 2)
        )
    parts = {name: shape.layers * flops for name, flops in per_layer.items()}
    parts["lm_head"] = 2 * T * d * shape.vocab
    return parts


def flop_ratio(shape: Shape, length: int, image_tokens: int | None = None) -> float:
    """Analytic forward FLOPs WINGS / plain LLM (training is ~3x forward for both: the same ratio)."""
    n_img = shape.image_tokens if image_tokens is None else image_tokens
    wings = sum(forward_flops(shape, length, n_img, True).values())
    return wings / sum(forward_flops(shape, length, n_img, False).values())


def decode_reads(shape: Shape, context: int, image_tokens: int, wings: bool) -> dict[str, int]:
    """Values read by one cached decode step (batch 1, `context` tokens cached, `image_tokens` of them an image).

    At batch 1 a decode step multiplies one token by every weight matrix and reads every cached key and value
    once, so on hardware bound by memory bandwidth its time follows these counts (times the bytes per value).
    The unwrapped Qwen2: the decoder layers' weights (q/k/v with biases, o, MLP, two norms), the main cache
    (keys and values of the KV heads), the final norm, one embedding row and the lm_head. WINGS adds, per
    layer, the learner weights a step uses (both learners' q and o, the textual learner's k and v for the new
    token, the router) and the learners' cache: a key and a value of full width d for every cached token (image
    tokens for the visual learner, text tokens for the textual one). Packed block-diagonal matrices read some
    zeros on top of this (see docs/decoding.md); the count is the ideal.
    """
    d, kv, r, h = shape.hidden, shape.kv_heads * shape.head_dim, shape.rank, shape.heads
    per_layer = {
        "layer_weights": d * (d + 2 * kv) + (d + 2 * kv) + d * d + 3 * d * shape.mlp + 2 * d,
        "kv_cache": 2 * context * kv,
    }
    if wings:
        per_layer["learner_weights"] = 2 * 2 * (2 * d * r) + 2 * (2 * d * r) + (2 * h * 2 + 2)
        per_layer["learner_cache"] = 2 * context * d
    parts = {name: shape.layers * count for name, count in per_layer.items()}
    parts["head"] = shape.vocab * d + 2 * d  # lm_head, final norm, the new token's embedding row
    return parts


def decode_read_ratio(shape: Shape, context: int, image_tokens: int | None = None) -> float:
    """Analytic values read per decode step, WINGS / plain LLM: the time ratio where decoding is memory-bound."""
    n_img = shape.image_tokens if image_tokens is None else image_tokens
    return sum(decode_reads(shape, context, n_img, True).values()) / sum(decode_reads(shape, context, n_img, False).values())
