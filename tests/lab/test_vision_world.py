"""Tests for the lab's vision world: easy-vqa loading, labels, the tiny encoder, pretraining."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("easy_vqa")

from wings.lab.vision_world import (
    COLOURS,
    SHAPES,
    UNLABELLED,
    EasyVQAImages,
    VQASample,
    derive_image_labels,
    easy_vqa_answers,
    easy_vqa_image_paths,
    encode_images,
    load_easy_vqa,
    load_pixel_values,
    make_image_processor,
    make_tiny_vision_encoder,
    precompute_features,
    pretrain_vision,
    standardise_features,
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train_samples():
    return load_easy_vqa("train")


def test_vocabulary_matches_easy_vqa_answers():
    assert set(easy_vqa_answers()) == set(COLOURS) | set(SHAPES) | {"yes", "no"}


def test_loader_pairs_questions_with_their_images(train_samples):
    assert len(train_samples) == 38_575 and len(load_easy_vqa("test")) == 9_673
    first = train_samples[0]
    assert first == VQASample(
        "what is the blue shape?", "rectangle", 0, easy_vqa_image_paths("train")[0]
    )
    assert os.path.exists(first.image_path)
    with pytest.raises(ValueError, match="split"):
        load_easy_vqa("validation")


def test_labels_from_known_questions(train_samples):
    # Image 0 of the train split: "what is the blue shape?" -> rectangle,
    # "what color is the shape?" -> blue (easy-vqa's data/train/questions.json).
    labels = derive_image_labels([s for s in train_samples if s.image_id == 0])
    assert labels.shape == {0: SHAPES.index("rectangle")}
    assert labels.colour == {0: COLOURS.index("blue")}

    made_up = [
        VQASample("what shape is present?", "triangle", 7, "7.png"),
        VQASample("is there a red shape?", "yes", 7, "7.png"),  # yes/no: not used
        VQASample("what color is the circle?", "teal", 8, "8.png"),
    ]
    labels = derive_image_labels(made_up)
    assert labels.shape == {7: 2} and labels.colour == {8: COLOURS.index("teal")}
    shape, colour = labels.arrays([7, 8, 9])
    assert shape.tolist() == [2, UNLABELLED, UNLABELLED]
    assert colour.tolist() == [UNLABELLED, 6, UNLABELLED]

    with pytest.raises(ValueError, match="image 7"):
        derive_image_labels(made_up + [VQASample("what shape is in the image?", "circle", 7, "")])


def test_about_78_percent_of_images_are_labelled(train_samples):
    labels = derive_image_labels(train_samples)  # also checks that no image has two labels
    assert 0.74 < len(labels.shape) / 4000 < 0.82
    assert 0.74 < len(labels.colour) / 4000 < 0.82


def test_encoder_gives_16_tokens_of_width_96():
    encoder = make_tiny_vision_encoder(seed=0)
    processor = make_image_processor()
    paths = [easy_vqa_image_paths("test")[i] for i in range(3)]
    pixels = load_pixel_values(paths, processor)
    assert pixels.shape == (3, 3, 64, 64) and pixels.dtype == torch.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0 and pixels.min() < 0 < pixels.max()
    last = precompute_features(encoder, processor, paths, layer=-1)
    assert last.shape == (3, 16, 96)
    before_last = precompute_features(encoder, processor, paths, layer=-2)
    assert before_last.shape == (3, 16, 96) and not torch.allclose(last, before_last)
    reference = encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(last, reference)
    assert 0.3e6 < sum(p.numel() for p in encoder.parameters()) < 0.5e6
    again = make_tiny_vision_encoder(seed=0)
    torch.testing.assert_close(encode_images(again, pixels), last)


def test_standardise_features_uses_given_statistics():
    features = torch.randn(10, 16, 4) * 3 + 2
    out, mean, std = standardise_features(features)
    assert out.reshape(-1, 4).mean(0).abs().max() < 1e-5
    again, _, _ = standardise_features(features[:2], mean, std)
    torch.testing.assert_close(again, out[:2])


def test_short_vision_pretraining_reduces_the_loss(train_samples):
    processor = make_image_processor()

    def subset(split, samples, n):
        paths = easy_vqa_image_paths(split)
        ids = sorted(paths)[:n]
        images = EasyVQAImages(ids, load_pixel_values([paths[i] for i in ids], processor))
        return images, derive_image_labels([s for s in samples if s.image_id < n])

    train = subset("train", train_samples, 300)
    test = subset("test", load_easy_vqa("test"), 100)
    encoder = make_tiny_vision_encoder(seed=0)
    result = pretrain_vision(
        encoder, processor, steps=30, batch_size=32, lr=1e-3, train=train, test=test,
        progress=False,
    )  # fmt: skip
    assert len(result.losses) == 30
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert 0.0 <= result.shape_acc <= 1.0 and result.colour_acc > 1 / len(COLOURS)
    assert not encoder.training
