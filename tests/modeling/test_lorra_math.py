"""The shared plain-torch learner/router equations (what both engines call) against naive formulas."""

import torch

from wings.modeling.lorra import LoRRA, LowRankResidual, low_rank_out, mix_outputs, residual_low_rank
from wings.modeling.router import SegmentRouter, segment_route


def test_residual_low_rank_is_x_plus_b_a_x():
    torch.manual_seed(0)
    x, down, up = torch.randn(2, 3, 8), torch.randn(4, 8), torch.randn(8, 4)
    expected = torch.stack([torch.stack([v + up @ (down @ v) for v in row]) for row in x])
    torch.testing.assert_close(residual_low_rank(x, down, up), expected)


def test_low_rank_out_is_b_a_attended():
    torch.manual_seed(0)
    attended, down, up = torch.randn(5, 8), torch.randn(2, 8), torch.randn(8, 2)
    expected = torch.stack([up @ (down @ v) for v in attended])
    torch.testing.assert_close(low_rank_out(attended, down, up), expected)
    torch.testing.assert_close(low_rank_out(attended.view(5, 1, 8), down, up), expected.view(5, 1, 8))


def test_mix_outputs_adds_each_learner_once_by_its_weight():
    torch.manual_seed(0)
    hidden, visual, textual = torch.randn(3, 2, 4, 6).unbind(0)
    route = torch.softmax(torch.randn(2, 4, 2), dim=-1)
    expected = hidden.clone()
    for b in range(2):
        for t in range(4):
            expected[b, t] += route[b, t, 0] * visual[b, t] + route[b, t, 1] * textual[b, t]
    torch.testing.assert_close(mix_outputs(hidden, visual, textual, route), expected)


def test_segment_route_is_softmax_of_linear_over_image_and_text_mass():
    torch.manual_seed(0)
    heads = 3
    mass, weight, bias = torch.rand(2, 5, heads), torch.randn(2, 2 * heads), torch.randn(2)
    logits = torch.zeros(2, 5, 2)
    for j in range(2):
        for h in range(heads):
            logits[..., j] += weight[j, h] * mass[..., h] + weight[j, heads + h] * (1 - mass[..., h])
        logits[..., j] += bias[j]
    torch.testing.assert_close(segment_route(mass, weight, bias), torch.softmax(logits, dim=-1))


def test_segment_router_folded_fast_path_equals_segment_route():
    torch.manual_seed(0)
    router = SegmentRouter(4)
    router.reset_parameters(std=0.5)
    with torch.no_grad():
        router.linear.bias.normal_()
    mass = torch.rand(2, 7, 4)
    with torch.no_grad():
        torch.testing.assert_close(router(mass), segment_route(mass, router.linear.weight, router.linear.bias))


def test_learner_modules_use_the_shared_equations():
    torch.manual_seed(0)
    block = LowRankResidual(8, 2)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(block(x), x + block.up(block.down(x)))
    learner = LoRRA(8, 2, 2)
    learner.reset_parameters(std=0.5)
    torch.nn.init.normal_(learner.o_up.weight)
    attended = torch.randn(4, 8)
    torch.testing.assert_close(
        low_rank_out(attended, learner.o_down.weight, learner.o_up.weight), learner.o_up(learner.o_down(attended))
    )
