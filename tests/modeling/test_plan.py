"""`ForwardPlan`: per-forward state built once on first use, shared by the layers, named (not identity-keyed)."""

import torch

from tiny import image_prompt, randomize_learners, tiny_wings
from wings.modeling.plan import ForwardPlan, LearnerKeys, gather_tokens
from wings.modeling.rope import rope_tables


def _plan():
    torch.manual_seed(0)
    source = torch.randn(2, 5, 8)
    index = torch.tensor([[1, 2], [0, 4]])
    keys = {
        "visual": LearnerKeys(index=index, visible=torch.ones(2, 5, 2, dtype=torch.bool), n_new=2),
        "textual": LearnerKeys(index=None, visible=torch.ones(2, 5, 5, dtype=torch.bool).tril(), n_new=5),
    }
    positions = torch.arange(5)[None]
    return ForwardPlan(source=source, position_ids=positions, keys=keys, key_is_image=torch.zeros(2, 5),
                       mode="routed"), index


def test_plan_builds_each_derived_tensor_once_and_names_it():
    plan, index = _plan()
    cos, sin = torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    assert plan.mask("visual") is plan.mask("visual")
    assert plan.pair_mask().visual is plan.mask("visual")
    queries = plan.query_rope(("layer", None), cos, sin)
    # Same name: the same tables, even from other tensors (layers of one type receive equal tables).
    assert plan.query_rope(("layer", None), cos.clone(), sin.clone()) is queries
    assert plan.query_rope(("learner", None), cos, sin) is not queries
    assert plan.key_rope("textual", ("layer", None), cos, sin) is queries  # keys = the chunk's tokens
    gathered = plan.key_rope("visual", ("layer", None), cos, sin)
    expected = rope_tables(gather_tokens(cos.expand(2, -1, -1), index), gather_tokens(sin.expand(2, -1, -1), index))
    for ours, theirs in zip(gathered, expected):
        torch.testing.assert_close(ours, theirs)
    with torch.no_grad():
        assert plan.features("visual") is plan.features("visual")
        torch.testing.assert_close(plan.features("visual"), gather_tokens(plan.source, index))
    assert plan.features("textual") is plan.source
    fresh, _ = _plan()  # a new forward: nothing carried over
    assert fresh.mask("visual") is not plan.mask("visual")


def test_features_are_gathered_per_layer_under_gradients():
    plan, _ = _plan()
    plan.source.requires_grad_(True)
    first, second = plan.features("visual"), plan.features("visual")
    assert first is not second and first.requires_grad


def test_one_plan_per_forward_reaches_every_layer():
    model = tiny_wings()
    randomize_learners(model)
    seen = []
    for layer in model.wings_layers:
        layer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["learner_inputs"]), with_kwargs=True)
    ids = torch.tensor([image_prompt([10, 11], [20, 21])])
    with torch.no_grad():
        model(ids, pixel_values=torch.randn(1, 3, 32, 32))
        model(ids, pixel_values=torch.randn(1, 3, 32, 32))
    n = len(model.wings_layers)
    assert len(seen) == 2 * n and all(p is seen[0] for p in seen[:n]) and seen[n] is not seen[0]
    assert ("mask", "visual") in seen[0]._derived  # built by the first layer, kept for the others
