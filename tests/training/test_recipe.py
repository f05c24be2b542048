"""Recipes are data: the shipped ones load, overrides apply, mistakes are named."""

import pytest

from tiny import tiny_wings
from wings.training.groups import parameter_groups, set_trainable
from wings.training.recipe import RecipeError, load_recipe, recipe_from_dict

SHIPPED = ["wings_stage1", "wings_stage2", "llava_stage1", "llava_stage2", "lora_stage2", "wings_anyres_stage1",
           "wings_anyres_stage2"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_load(name):
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.train


def test_paper_learning_rates():
    s1, s2 = load_recipe("wings_stage1"), load_recipe("wings_stage2")
    assert s1.train == {"projector": 2e-5, "visual_learners": 2e-5} and s1.model["learner_mode"] == "visual_only"
    assert s2.train["llm"] == s2.train["textual_learners"] == s2.train["router"] == 2e-6
    assert s2.train["projector"] == 1e-5
    assert load_recipe("llava_stage1").train == {"projector": 1e-3}
    assert load_recipe("llava_stage2").train == {"llm": 2e-5, "projector": 2e-5}


def test_overrides_are_parsed_as_yaml():
    recipe = load_recipe("wings_stage1", ["optim.batch_size=3", "train.projector=1e-4", "model.learner_rank=8"])
    assert recipe.optim.batch_size == 3 and recipe.train["projector"] == 1e-4 and recipe.model["learner_rank"] == 8


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"name": "x", "train": {"brain": 1e-3}}, "unknown parameter group"),
        ({"name": "x", "train": {}}, "nothing would train"),
        ({"name": "x", "train": {"llm": -1}}, "positive learning rate"),
        ({"name": "x", "method": "llava", "train": {"router": 1e-3}}, "no learners or router"),
        ({"name": "x", "train": {"llm": 1e-3}, "optim": {"batchsize": 2}}, r"unknown key\(s\) \['batchsize'\] in 'optim'"),
        ({"name": "x", "trian": {}}, "unknown key"),
        # values are typed and range-checked when the recipe is built
        ({"name": "x", "train": {"llm": 1e-3}, "optim": {"epochs": "two"}}, "optim.epochs must be a number"),
        ({"name": "x", "train": {"llm": 1e-3}, "optim": {"epochs": 0}}, r"optim.epochs must be > 0"),
        ({"name": "x", "train": {"llm": 1e-3}, "optim": {"bf16": "yes"}}, "optim.bf16 must be true or false"),
        ({"name": "x", "train": {"llm": 1e-3}, "optim": {"save_total_limit": 0}}, "save_total_limit must be >= 1"),
        ({"name": "x", "train": {"llm": 1e-3}, "optim": {"warmup_ratio": 3}}, "warmup_ratio is a fraction"),
        ({"name": "x", "train": {"llm": 1e-3}, "optim": {"report_to": [1]}}, r"optim.report_to\[0\] must be a string"),
        ({"name": "x", "train": {"llm": 1e-3}, "optim": "fast"}, "'optim' must be a mapping"),
        ({"name": "x", "train": {"llm": 1e-3}, "data": {"num_proc": 0}}, "data.num_proc must be >= 1"),
        ({"name": "x", "train": {"llm": 1e-3}, "model": {"learner_rank": 0}}, "model.learner_rank must be >= 1"),
        ({"name": "x", "train": {"llm": 1e-3}, "model": {"learner_layers": [0, "one"]}}, r"learner_layers\[1\]"),
        ({"name": "x", "train": {"llm": 1e-3}, "model": {"learner_mode": "both"}}, "learner_mode must be one of"),
        ({"name": "x", "method": "lora", "train": {"lora": 1e-3}, "lora": {"dropout": 1.5}}, "lora.dropout"),
        ({"name": "x", "train": {"llm": "fast"}}, "train.llm must be a number"),
        ({"name": "x", "train": {"llm": 1e-3}, "data": {"packing": "yes"}}, "data.packing must be true or false"),
        ({"name": "x", "train": {"llm": 1e-3}, "data": {"packing": True, "group_by_modality_length": True}},
         "data.packing and data.group_by_modality_length exclude each other"),
        ({"name": "x", "train": {"llm": 1e-3}, "data": {"packing": True}, "model": {"router": "positional"}},
         "data.packing needs model.router 'segment'"),
    ],
)
def test_recipe_mistakes_are_named(raw, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(raw, "my.yaml")


def test_packing_is_off_by_default_and_set_by_an_override():
    assert load_recipe("wings_stage1").data.packing is False
    assert load_recipe("wings_stage1", ["data.packing=true"]).data.packing is True


def test_recipe_values_keep_their_types():
    recipe = recipe_from_dict({"name": "x", "train": {"llm": "2e-5"}, "optim": {"epochs": 2, "report_to": "wandb",
                                                                               "save_total_limit": None},
                               "model": {"learner_layers": None, "learner_init_std": 1}})
    assert recipe.train == {"llm": 2e-5} and isinstance(recipe.optim.epochs, float) and recipe.optim.epochs == 2.0
    assert recipe.optim.report_to == ["wandb"] and recipe.optim.save_total_limit is None
    assert recipe.model == {"learner_layers": None, "learner_init_std": 1.0}


def test_bad_override_and_missing_recipe():
    with pytest.raises(RecipeError, match="key=value"):
        load_recipe("wings_stage1", ["optim.batch_size"])
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("no_such_recipe")


def test_parameter_groups_partition_the_model():
    model = tiny_wings(learner_layers=[0, 1])
    groups = parameter_groups(model)
    names = [n for params in groups.values() for n, _ in params]
    assert len(names) == len(set(names)) == len(list(model.parameters()))
    assert all(".visual_learner." in n for n, _ in groups["visual_learners"])
    assert all(n.startswith("multi_modal_projector.") for n, _ in groups["projector"])
    assert groups["lora"] == []
    counts = set_trainable(model, ["projector", "visual_learners"])
    assert set(counts) == {"projector", "visual_learners"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for g in ("projector", "visual_learners") for n, _ in groups[g]}
    with pytest.raises(ValueError, match="empty"):
        set_trainable(model, ["lora"])


def test_train_preset_fills_backbones_and_shape(monkeypatch):
    import wings.training.run as run
    from wings.cli import main

    seen = {}

    def fake_train(recipe, **kwargs):
        seen.update(kwargs, recipe=recipe)
        return run.TrainResult(output_dir=kwargs["output"], global_step=0, train_loss=0.0, seconds=0.0)

    monkeypatch.setattr(run, "train", fake_train)
    main(["train", "wings_stage1", "--preset", "wings-base", "--data", "d.json", "--output", "out",
          "model.learner_rank=32"])
    assert seen["llm"] == "Qwen/Qwen1.5-7B-Chat" and seen["vision"] == "google/siglip-so400m-patch14-384"
    assert seen["recipe"].model["learner_rank"] == 32  # explicit overrides win over the preset
    assert seen["recipe"].model["router"] == "segment"


@pytest.mark.parametrize("enabled", [True, False])
def test_training_arguments_carry_the_recipe_checkpointing(enabled, tmp_path):
    from wings.training.run import training_arguments

    recipe = load_recipe("wings_stage2", [f"optim.gradient_checkpointing={str(enabled).lower()}", "optim.bf16=false"])
    args = training_arguments(recipe, str(tmp_path), max_steps=5)
    # The field was renamed after transformers 5.19; either name must carry the recipe's choice.
    on = getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing
    assert bool(on) is enabled and args.max_steps == 5
    kwargs = getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs
    assert (kwargs == {"use_reentrant": False}) is enabled
