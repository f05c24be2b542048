"""The package's LoRRA agrees with a naive reference written from the paper's equations."""

import math

import torch

from wings.modeling.lorra import LoRRA
from wings.modeling.rope import rope_tables as prepare


def naive_rope(x, pos, base=10000.0):
    """x [d_h] at integer position pos, Llama rotate-half convention, computed element by element."""
    d = x.shape[0]
    half = d // 2
    out = torch.empty_like(x)
    for i in range(half):
        theta = pos * base ** (-2 * i / d)
        c, s = math.cos(theta), math.sin(theta)
        out[i] = x[i] * c - x[i + half] * s
        out[i + half] = x[i + half] * c + x[i] * s
    return out


def rope_tables(positions, d_h, base=10000.0):
    inv = 1.0 / (base ** (torch.arange(0, d_h, 2).float() / d_h))
    freqs = positions[..., None].float() * inv
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos(), emb.sin()


def naive_lorra(m: LoRRA, h, q_pos, feats, k_pos, k_valid):
    """Loops over batch, queries, heads and keys with an explicit softmax."""
    B, T, d = h.shape
    H, dh = m.num_heads, m.head_dim

    def lowrank(block, x):
        return x + block.up.weight @ (block.down.weight @ x)

    out = torch.zeros(B, T, d)
    for b in range(B):
        keys = [(j, lowrank(m.k, feats[b, j]), lowrank(m.v, feats[b, j])) for j in range(feats.shape[1])]
        for t in range(T):
            q = lowrank(m.q, h[b, t])
            visible = [(j, k, v) for j, k, v in keys if k_valid[b, j] and k_pos[b, j] <= q_pos[b, t]]
            heads = []
            for hd in range(H):
                sl = slice(hd * dh, (hd + 1) * dh)
                if not visible:
                    heads.append(torch.zeros(dh))
                    continue
                qh = naive_rope(q[sl], int(q_pos[b, t]))
                scores = torch.tensor(
                    [float(qh @ naive_rope(k[sl], int(k_pos[b, j]))) / math.sqrt(dh) for j, k, _ in visible]
                )
                w = torch.exp(scores - scores.max())
                w = w / w.sum()
                heads.append(sum(w[i] * v[sl] for i, (_, _, v) in enumerate(visible)))
            attn = torch.cat(heads)
            out[b, t] = m.o_up.weight @ (m.o_down.weight @ attn)
    return out


def test_lorra_matches_naive_reference():
    torch.manual_seed(0)
    d, H, r = 16, 2, 4
    m = LoRRA(d, H, r)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    B, T, N = 2, 5, 4
    h = torch.randn(B, T, d)
    feats = torch.randn(B, N, d)
    q_pos = torch.tensor([[0, 1, 2, 5, 6], [3, 4, 5, 6, 7]])
    k_pos = torch.tensor([[1, 2, 3, 4], [0, 1, 9, 9]])
    k_valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    cos_q, sin_q = rope_tables(q_pos, d // H)
    cos_k, sin_k = rope_tables(k_pos, d // H)
    with torch.no_grad():
        k, v = m.keys_values(feats, cos_k, sin_k)
        visible = (k_pos[:, None, :] <= q_pos[:, :, None]) & k_valid[:, None, :]
        ours = m(h, prepare(cos_q, sin_q), k, v, visible)
        ref = naive_lorra(m, h, q_pos, feats, k_pos, k_valid)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    assert ours[0, 0].abs().max() == 0  # position 0 sees no key at positions >= 1


def test_fresh_lorra_outputs_zero():
    m = LoRRA(16, 2, 4)
    m.reset_parameters()
    h = torch.randn(1, 3, 16)
    cos, sin = rope_tables(torch.arange(3)[None], 8)
    k, v = m.keys_values(h, cos, sin)
    out = m(h, prepare(cos, sin), k, v, torch.ones(1, 3, 3, dtype=torch.bool).tril())
    assert out.abs().max() == 0


def test_weights_are_all_of_a_learners_parameters():
    # The packed decode weights are rebuilt when one of these changes: a parameter left out would go stale.
    lorra = LoRRA(32, 4, 8)
    assert [id(p) for p in lorra.weights()] == [id(p) for p in lorra.parameters()]
