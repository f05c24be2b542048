"""Evaluation follows each image's own token count: LAWS spans, multiple-choice scoring and generation (what IIT
runs) with tiled images of several shapes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tiny import save_tiny_wings
from wings import WingsForConditionalGeneration, WingsProcessor
from wings.evaluation.laws import compute_laws
from wings.evaluation.scoring import choice_loglikelihoods, generate_answers

WIDE, TALL, SQUARE = (Image.new("RGB", size, color) for size, color in
                      [((90, 30), (200, 20, 20)), ((20, 64), (20, 200, 20)), ((40, 40), (20, 20, 200))])


@pytest.fixture(scope="module")
def anyres(tmp_path_factory):
    path = save_tiny_wings(tmp_path_factory.mktemp("anyres"), image_layout="anyres")
    return WingsForConditionalGeneration.from_pretrained(path).eval(), WingsProcessor.from_pretrained(path)


def test_laws_image_span_is_the_first_images_own_count(anyres):
    model, processor = anyres
    samples = [
        {"id": "wide", "text": "what colour is the image? <image> red", "images": [WIDE]},
        {"id": "two", "text": "describe the picture: <image><image> fine", "images": [TALL, SQUARE]},
        {"id": "square", "text": "hello <image> how are you?", "images": [SQUARE]},
    ]
    one = compute_laws(model, processor, samples, batch_size=1, progress=False)
    three = compute_laws(model, processor, samples, batch_size=3, progress=False)
    np.testing.assert_allclose(three.curves, one.curves, rtol=1e-4, atol=1e-5)
    counts = [processor.image_token_count(image) for image in (WIDE, TALL, SQUARE)]
    assert len(set(counts)) == 3
    # The image span is the first image's tokens, even when a second image of another size follows at once.
    assert one.span_tokens[:, 1].tolist() == [counts[0], counts[1], counts[2]]


def test_scoring_and_generation_batch_equal_one_by_one(anyres):
    model, processor = anyres
    prompts = ["<image>\nwhat colour is the image?", "<image>\nwhich statement is true?", "<image>\nhello"]
    images = [[WIDE], [TALL], [SQUARE]]
    options = [["red", "green", "blue"]] * 3
    batched = choice_loglikelihoods(model, processor, prompts, options, images, batch_size=3)
    alone = [choice_loglikelihoods(model, processor, [p], [o], [i], batch_size=1)[0]
             for p, o, i in zip(prompts, options, images)]
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-4)
    replies = generate_answers(model, processor, prompts, images, batch_size=3, max_new_tokens=4)
    assert replies == [generate_answers(model, processor, [p], [i], batch_size=1, max_new_tokens=4)[0]
                       for p, i in zip(prompts, images)]


def test_loading_refuses_a_processor_of_another_layout(tmp_path):
    from wings.evaluation.loading import load_model_and_processor

    path = save_tiny_wings(tmp_path, image_layout="anyres")
    model, processor = load_model_and_processor(str(path), device="cpu")
    assert processor.image_layout == model.config.image_layout == "anyres"
    fixed = WingsProcessor(processor.image_processor, processor.tokenizer, image_seq_length=4)
    fixed.save_pretrained(path)
    with pytest.raises(ValueError, match="prepares images as"):
        load_model_and_processor(str(path), device="cpu")
