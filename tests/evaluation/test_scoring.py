"""Scoring: log-likelihood and generation multiple choice, VQA normalisation, loading."""

from __future__ import annotations

import math
import random

import pytest
import torch
from eval_fixtures import (
    COLORS,
    OracleLM,
    chat,
    color_image,
    last_user_message,
    make_processor,
    make_wings,
    pixels_to_color,
    save_wings_dir,
)

from wings import WingsForConditionalGeneration
from wings.data.llava import DataError
from wings.evaluation.multiple_choice import evaluate_mc_items, predict_choices
from wings.evaluation.pools import MCItem
from wings.evaluation.scoring import best_choices, choice_loglikelihoods, exact_match_accuracy, generate_answers
from wings.processing import WingsProcessor

# choice_loglikelihoods of test_pinned_scores_at_a_fixed_seed (torch 2.13, CPU); the same before the split.
PINNED_SCORES = [-12.0309, -11.8895, -18.166, -12.1778]
WORD_CHOICES = ["planet orbit", "red", "telescope galaxy comet", "flour", "goalkeeper referee", "oven butter"]


def score_choices_loglik(*args, **kwargs) -> list[int]:
    return best_choices(choice_loglikelihoods(*args, **kwargs))


@pytest.fixture(scope="module")
def processor() -> WingsProcessor:
    return make_processor()


@pytest.fixture(scope="module")
def wings_model(processor):
    return make_wings(processor, seed=0)


def make_items(processor, n_text=7, n_visual=6, seed=0):
    """Text items (gold looked up from the question) and visual items whose prompts are all the
    same text: only the image tells the answer, so a scorer that mixes up images fails."""
    rng = random.Random(seed)
    prompts, choices, images, golds, wanted = [], [], [], [], {}
    for k in range(n_text):
        options = rng.sample(WORD_CHOICES, rng.choice([2, 3, 4]))
        gold = rng.randrange(len(options))
        question = f"Which statement is true? {k}"
        wanted[question] = options[gold]
        prompts.append(chat(processor, question))
        choices.append(options)
        images.append([])
        golds.append(gold)
    for _ in range(n_visual):
        options = rng.sample(list(COLORS), 3)
        gold = rng.randrange(3)
        prompts.append(chat(processor, "<image>\nWhat colour is the shape?"))
        choices.append(options)
        images.append([color_image(options[gold])])
        golds.append(gold)
    order = list(range(len(prompts)))
    rng.shuffle(order)  # interleave text and visual items within batches
    pick = lambda xs: [xs[i] for i in order]  # noqa: E731
    return pick(prompts), pick(choices), pick(images), pick(golds), wanted


def make_oracle(processor, wanted):
    def answer(prompt: str, row_images: list[torch.Tensor]) -> str:
        if row_images:
            return pixels_to_color(row_images[-1])
        return wanted[last_user_message(prompt)]

    return OracleLM(processor, answer)


@pytest.mark.parametrize("normalize", ["mean", "sum"])
def test_loglik_and_generate_pick_what_a_rigged_model_wants(processor, normalize):
    prompts, choices, images, golds, wanted = make_items(processor)
    oracle = make_oracle(processor, wanted)
    by_loglik = score_choices_loglik(oracle, processor, prompts, choices, images, batch_size=3, normalize=normalize)
    assert by_loglik == golds
    by_generation, replies = predict_choices(
        oracle, processor, prompts, choices, images, method="generate", batch_size=4, max_new_tokens=10
    )
    assert replies == [c[g] for c, g in zip(choices, golds, strict=True)]  # the oracle answers with the text
    assert by_generation == by_loglik == golds
    assert exact_match_accuracy(by_loglik, golds) == 1.0


def test_rigged_model_with_wrong_images_fails(processor):
    """The same items with the images of the visual items rotated: the oracle follows the images."""
    prompts, choices, images, golds, wanted = make_items(processor)
    visual = [i for i, imgs in enumerate(images) if imgs]
    rotated = list(images)
    for a, b in zip(visual, visual[1:] + visual[:1], strict=True):
        rotated[a] = images[b]
    predictions = score_choices_loglik(make_oracle(processor, wanted), processor, prompts, choices, rotated, 4)
    assert exact_match_accuracy([predictions[i] for i in visual], [golds[i] for i in visual]) < 1.0


def test_loglik_equals_an_unbatched_reference_on_a_real_model(processor, wings_model):
    """Left padding, several images per prompt and logits_to_keep must not change any score."""
    prompts = [
        chat(processor, "<image>\nWhat colour is the shape?"),
        chat(processor, "Which statement is true? hello"),
        chat(processor, "<image>\ncompare <image>\nwhich is red?"),
        chat(processor, "planet"),
    ]
    images = [[color_image("red")], [], [color_image("blue"), color_image("green", (20, 50))], []]
    choices = [["red", "green blue"], ["A", "B", "The answer is C"], ["yellow", "red"], ["orbit telescope", "A"]]
    got = choice_loglikelihoods(wings_model, processor, prompts, choices, images, batch_size=3, normalize="sum")
    got_mean = choice_loglikelihoods(wings_model, processor, prompts, choices, images, batch_size=2, normalize="mean")
    tok = processor.tokenizer
    for i, prompt in enumerate(prompts):
        context = tok(processor.expand_image_tokens(prompt), add_special_tokens=False)["input_ids"]
        pixels = processor(prompt, images=images[i] or None)
        for j, option in enumerate(choices[i]):
            continuation = tok(option, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logits = wings_model(input_ids=ids, pixel_values=_padded_pixels(processor, images[i])).logits[0]
            logprobs = torch.log_softmax(logits.float(), -1)
            n = len(continuation)
            expected = sum(float(logprobs[len(context) - 1 + k, t]) for k, t in enumerate(continuation))
            assert got[i][j] == pytest.approx(expected, abs=1e-4), (i, j)
            assert got_mean[i][j] == pytest.approx(expected / n, abs=1e-4), (i, j)
        assert pixels["input_ids"].shape[1] == len(context)


def _padded_pixels(processor, images):
    """The reference image path: pad to a square with the mean colour (LLaVA), then the processor."""
    if not images:
        return None
    from wings.data.images import mean_color, pad_to_square

    squares = [pad_to_square(img, mean_color(processor.image_processor)) for img in images]
    return processor.image_processor(squares, return_tensors="pt")["pixel_values"]


def test_random_model_is_near_chance(processor, wings_model):
    rng = random.Random(1)
    words = ["planet", "orbit", "flour", "oven", "butter", "garlic", "stadium", "striker", "comet", "galaxy"]
    prompts, choices, golds = [], [], []
    for k in range(48):
        prompts.append(chat(processor, f"Which word is it? {k}"))
        choices.append(rng.sample(words, 4))
        golds.append(rng.randrange(4))
    predictions = score_choices_loglik(wings_model, processor, prompts, choices, batch_size=16)
    assert 0.05 <= exact_match_accuracy(predictions, golds) <= 0.5


def test_generate_answers_batched_equals_one_by_one(processor, wings_model):
    prompts = [
        chat(processor, "<image>\nWhat colour is the shape?"),
        chat(processor, "hello how are you?"),
        chat(processor, "Which statement is true? The answer is"),
        chat(processor, "<image>\n<image>\ncompare"),
    ]
    images = [[color_image("red")], [], [], [color_image("blue"), color_image("yellow")]]
    batched = generate_answers(wings_model, processor, prompts, images, batch_size=3, max_new_tokens=5)
    single = [generate_answers(wings_model, processor, [p], [im], batch_size=1, max_new_tokens=5)[0]
              for p, im in zip(prompts, images, strict=True)]
    assert batched == single
    # Only the reply is returned: decode the new tokens of a direct generate() call.
    inputs = processor(prompts[1])
    out = wings_model.generate(**inputs, max_new_tokens=5, do_sample=False)
    reply = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert batched[1] == reply


def test_bad_requests_are_named(processor, wings_model):
    prompt = chat(processor, "<image>\nWhat colour?")
    with pytest.raises(ValueError, match="prompt 0: 1 '<image>' marker.*0 image"):
        score_choices_loglik(wings_model, processor, [prompt], [["red", "blue"]], [[]])
    with pytest.raises(ValueError, match="normalize"):
        score_choices_loglik(wings_model, processor, [prompt], [["red"]], [[color_image("red")]], normalize="max")
    with pytest.raises(ValueError, match="item 0: choice 1"):
        score_choices_loglik(wings_model, processor, ["hi"], [["red", ""]])
    with pytest.raises(ValueError, match="2 prompts but 1 choice"):
        score_choices_loglik(wings_model, processor, ["a", "b"], [["red"]])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate_answers(wings_model, processor, ["planet " * 600], max_new_tokens=2)


def test_evaluate_mc_items_with_a_rigged_model(processor, tmp_path):
    rng = random.Random(3)
    items, gold_letters = [], {}
    for k in range(5):
        choices = tuple(rng.sample(WORD_CHOICES, 4))
        answer = rng.randrange(4)
        items.append(MCItem(id=f"t{k}", question=f"Which statement is true? {k}", choices=choices, answer=answer,
                            subject="words" if k % 2 else None))
        gold_letters[f"Which statement is true? {k}"] = "ABCD"[answer]
    for k, color in enumerate(["red", "green", "blue"]):
        color_image(color).save(tmp_path / f"{color}.png")
        choices = tuple(rng.sample(list(COLORS), 4))
        items.append(MCItem(id=f"v{k}", question="What colour is the shape?", choices=choices,
                            answer=choices.index(color), image=f"{color}.png", subject="colour"))

    def answer(prompt, row_images):
        message = last_user_message(prompt)
        if row_images:
            color = pixels_to_color(row_images[-1])
            return next(line[0] for line in message.splitlines() if line.endswith(f". {color}"))
        return gold_letters[message.splitlines()[0]]

    oracle = OracleLM(processor, answer)
    for method in ("loglik", "generate"):
        result = evaluate_mc_items(oracle, processor, items, image_folder=tmp_path, method=method, batch_size=3)
        assert result["acc"] == 1.0 and result["n"] == 8
        assert set(result["per_subject"]) == {"words", "colour", "-"}
        assert result["per_subject"]["colour"]["n"] == 3
        assert all(r["correct"] for r in result["records"])
    assert result["records"][0]["output"] in "ABCD"
    with pytest.raises(DataError, match="item 'v0': image 'red.png' not found under image folder"):
        evaluate_mc_items(oracle, processor, items, image_folder=tmp_path / "elsewhere")


def test_exact_match_accuracy():
    assert exact_match_accuracy([0, 1, None, 2], [0, 1, 2, 3]) == 0.5
    assert exact_match_accuracy([" paris", "B"], ["paris", "A"]) == 0.5
    assert math.isnan(exact_match_accuracy([], []))
    with pytest.raises(ValueError, match="2 predictions but 1 golds"):
        exact_match_accuracy([1, 2], [1])


def test_base_llm_with_its_tokenizer_scores_like_a_fresh_wings_model(processor):
    """The base LLM (a plain HF model + tokenizer) goes through the same scorer; a fresh WINGS model
    built from it (learners at zero) gives the same text-only scores."""
    from eval_fixtures import make_llm

    llm = make_llm(processor.tokenizer, seed=7)
    fresh = WingsForConditionalGeneration.from_llm_and_vision(
        make_llm(processor.tokenizer, seed=7), make_wings(processor).vision_tower,
        image_token_id=processor.image_token_id, learner_rank=4,
    ).eval()
    items = [MCItem(id=k, question=f"Which statement is true? {k}", choices=tuple(WORD_CHOICES[k % 3:k % 3 + 3]),
                    answer=k % 3) for k in range(6)]
    base = evaluate_mc_items(llm, processor.tokenizer, items, method="loglik", batch_size=4)
    wings_result = evaluate_mc_items(fresh, processor, items, method="loglik", batch_size=4)
    assert [r["prediction"] for r in base["records"]] == [r["prediction"] for r in wings_result["records"]]
    prompts = [chat(processor, f"Which statement is true? {k}") for k in range(3)]
    choices = [WORD_CHOICES[:3]] * 3
    expected = choice_loglikelihoods(llm, processor.tokenizer, prompts, choices, batch_size=2)
    got = choice_loglikelihoods(fresh, processor, prompts, choices, batch_size=2)
    assert [x for row in got for x in row] == pytest.approx([x for row in expected for x in row], abs=1e-5)
    replies = generate_answers(llm, processor.tokenizer, prompts, max_new_tokens=4)
    assert replies == generate_answers(fresh, processor, prompts, max_new_tokens=4)


def test_images_are_prepared_in_the_processors_training_mode(processor, wings_model):
    """Regression: scoring padded every image to a square whatever the model was trained with. A
    processor recording "resize" is scored on what that processor itself makes of the image."""
    resize = WingsProcessor(processor.image_processor, processor.tokenizer, image_seq_length=processor.image_seq_length,
                            image_mode="resize")  # fmt: skip
    image = color_image("red", (48, 16))  # far from square: padding changes the pixels a lot
    prompt = chat(resize, "<image>\nWhat colour is the shape?")
    choices = [["red", "green blue"]]
    scores = choice_loglikelihoods(wings_model, resize, [prompt], choices, [[image]], normalize="sum")[0]
    reference = resize(prompt, images=[image])  # WingsProcessor.__call__ applies its own mode
    for option, score in zip(choices[0], scores, strict=True):
        continuation = resize.tokenizer(option, add_special_tokens=False)["input_ids"]
        ids = torch.cat([reference["input_ids"], torch.tensor([continuation])], dim=1)
        with torch.no_grad():
            logprobs = torch.log_softmax(wings_model(input_ids=ids, pixel_values=reference["pixel_values"]).logits[0], -1)
        start = reference["input_ids"].shape[1]
        assert score == pytest.approx(sum(float(logprobs[start - 1 + k, t]) for k, t in enumerate(continuation)),
                                      abs=1e-4)  # fmt: skip
    padded = choice_loglikelihoods(wings_model, resize, [prompt], choices, [[image]], normalize="sum", image_mode="pad")
    assert padded[0] != pytest.approx(scores, abs=1e-4)  # an explicit mode still wins, and it matters here
    assert choice_loglikelihoods(wings_model, processor, [prompt], choices, [[image]], normalize="sum")[0] == (
        pytest.approx(padded[0], abs=1e-6)
    )  # the default processor records "pad"


def test_pinned_scores_at_a_fixed_seed(processor, wings_model):
    """Fixed numbers for the tiny seed-0 model: a silent change in encoding, padding or images shows here."""
    prompts = [chat(processor, "<image>\nWhat colour is the shape?"), chat(processor, "Which statement is true?")]
    images = [[color_image("blue", (40, 24))], []]
    scores = choice_loglikelihoods(wings_model, processor, prompts, [["red", "blue"], ["planet orbit", "flour"]],
                                   images, normalize="sum")  # fmt: skip
    assert [round(x, 4) for row in scores for x in row] == PINNED_SCORES
