"""Packed rows (several samples per row, positions restarting per sample) give each sample exactly the loss and
gradients it gets unpacked: main attention, both learners, their RoPE positions and the router stay per sample."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tiny import (
    IMAGE_SIZE, IMAGE_TOKEN_ID, SAVED_CORPUS, image_prompt, randomize_learners, tiny_processor, tiny_wings,
)
from wings.data.collate import LlavaCollator
from wings.data.packing import PackedCollator, PackedDataset
from wings.modeling.plan import same_sample
from wings.processing import WingsProcessor, processor_image_settings

TOL = 1e-5


def _samples() -> list[dict]:
    """Image and text-only samples mixed: a text-only sample follows an image sample inside a packed row."""
    gen = torch.Generator().manual_seed(0)

    def text(n):
        return torch.randint(8, 120, (n,), generator=gen).tolist()

    def image(n):
        return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)

    specs = [
        (image_prompt(text(3), text(6)), image(1)),
        (text(9), None),
        (image_prompt(text(2), text(4), n_images=2), image(2)),
        (text(5), None),
        (image_prompt([], text(7)), image(1)),
    ]
    samples = []
    for ids, pixels in specs:
        ids = torch.tensor(ids)
        labels = ids.masked_fill(ids == IMAGE_TOKEN_ID, -100)
        labels[: len(ids) // 3] = -100  # a prompt part without loss, as chat samples have
        samples.append({"input_ids": ids, "labels": labels, "pixel_values": pixels})
    return samples


class _Samples(torch.utils.data.Dataset):
    def __init__(self, samples):
        self.items = samples
        self.lengths = [len(s["input_ids"]) for s in samples]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _token_losses(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token losses [B, T-1] (0 where ignored) and the labels they predict."""
    logits = model(**batch, use_cache=False).logits.float()
    labels = batch["labels"][:, 1:]
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels.clamp(min=0), reduction="none")
    return losses * (labels != -100), labels


def _per_sample(losses, batch, rows) -> list[tuple[int, torch.Tensor]]:
    """(sample index, its summed loss) for each sample of each row, by its span in the row."""
    out = []
    for r, row in enumerate(rows):
        start = 0
        for index, length in row:
            # Tokens start+1 .. start+length-1 are predicted by the sample's own tokens.
            out.append((index, losses[r, start : start + length - 1].sum()))
            start += length
    return out


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _packed_vs_unpacked(model, samples, max_length) -> tuple[float, float]:
    """Max differences (per-sample summed loss, every gradient) between the samples unpacked (right-padded with
    an attention mask) and packed; checks that something was packed and that the learners and router learn."""
    model.train()  # no dropout in the tiny configs; learners use their training path
    unpacked = LlavaCollator(pad_token_id=0)(samples)
    model.zero_grad()
    losses, _ = _token_losses(model, unpacked)
    reference = {i: losses[i].sum() for i in range(len(samples))}
    sum(reference.values()).backward()
    reference_grads = _grads(model)

    packed_set = PackedDataset(_Samples(samples), max_length=max_length)
    assert len(packed_set) < len(samples)  # something is packed
    packed = PackedCollator(pad_token_id=0)([packed_set[i] for i in range(len(packed_set))])
    model.zero_grad()
    losses, _ = _token_losses(model, packed)
    rows = [[(i, len(samples[i]["input_ids"])) for i in row] for row in packed_set.rows]
    per_sample = dict(_per_sample(losses, packed, rows))
    sum(per_sample.values()).backward()
    packed_grads = _grads(model)

    assert sorted(per_sample) == list(range(len(samples)))
    assert set(packed_grads) == set(reference_grads)
    assert any("visual_learner" in n for n in packed_grads) and any("router" in n for n in packed_grads)
    # The model's own loss (mean over the same labelled tokens) agrees too.
    with torch.no_grad():
        assert torch.allclose(model(**packed, use_cache=False).loss, model(**unpacked, use_cache=False).loss, atol=TOL)
    loss_diff = max(abs(per_sample[i] - reference[i]).item() for i in reference)
    grad_diff = max((packed_grads[n] - reference_grads[n]).abs().max().item() for n in reference_grads)
    return loss_diff, grad_diff


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_give_each_sample_its_unpacked_loss_and_gradients(attention):
    model = tiny_wings(learner_mode="routed")
    model.set_attn_implementation(attention)
    randomize_learners(model)
    loss_diff, grad_diff = _packed_vs_unpacked(model, _samples(), max_length=40)
    assert loss_diff < TOL and grad_diff < TOL, (loss_diff, grad_diff)


def test_packed_any_resolution_images():
    """Any-resolution images (tiles of different counts, image_sizes) packed as the fixed layout is."""
    model = tiny_wings(learner_mode="routed", image_layout="anyres")
    randomize_learners(model)
    base = tiny_processor(SAVED_CORPUS)
    processor = WingsProcessor(base.image_processor, base.tokenizer, **processor_image_settings(model.config))
    colours = [(200, 30, 30), (20, 200, 40), (20, 40, 220)]
    images = [Image.new("RGB", size, colour) for size, colour in zip([(64, 32), (30, 90), (50, 50)], colours)]
    samples = []
    for k, sample_images in enumerate([[images[0]], [], [images[1], images[2]], [], [images[2]]]):
        ids = [10 + k, 11]
        for image in sample_images:
            ids += [IMAGE_TOKEN_ID] * processor.image_token_count(image) + [12 + k]
        ids = torch.tensor(ids + [20, 21 + k, 30 + k, 40 + k])
        sample = {"input_ids": ids, "labels": ids.masked_fill(ids == IMAGE_TOKEN_ID, -100), "pixel_values": None}
        if sample_images:
            sample.update(processor.prepare_images(sample_images))
        samples.append(sample)
    loss_diff, grad_diff = _packed_vs_unpacked(model, samples, max_length=64)
    assert loss_diff < TOL and grad_diff < TOL, (loss_diff, grad_diff)


def test_packed_learners_do_not_see_other_samples():
    """Without the same-sample condition the visual learner of a text-only sample would see the image before it."""
    model = tiny_wings(learner_mode="routed").eval()
    randomize_learners(model)
    samples = _samples()[:2]  # an image sample, then a text-only one
    packed = PackedCollator(pad_token_id=0)([PackedDataset(_Samples(samples), max_length=40)[0]])
    is_image = packed["input_ids"] == IMAGE_TOKEN_ID
    valid = torch.ones_like(is_image)
    positions = packed["position_ids"]
    segments = torch.cat([torch.zeros(len(samples[0]["input_ids"])), torch.ones(len(samples[1]["input_ids"]))])
    plan = model._learner_inputs(torch.zeros(*is_image.shape, 64), is_image, valid, positions, None, True,
                                 segments.long().unsqueeze(0))
    first = len(samples[0]["input_ids"])
    assert not plan.keys["visual"].visible[0, first:].any()  # the text-only sample sees no image key
    assert plan.keys["visual"].visible[0, first - 1].all()  # the image sample's last token sees all its images
    textual = plan.keys["textual"]
    key_tokens = textual.index[0]
    sees_other = textual.visible[0, first:][:, key_tokens < first]
    assert not sees_other.any()


def test_same_sample():
    segments = torch.tensor([[0, 0, 1, 1, 1]])
    index = torch.tensor([[1, 3]])
    expected = torch.tensor([[[1, 0], [1, 0], [0, 1], [0, 1], [0, 1]]], dtype=torch.bool)
    assert torch.equal(same_sample(segments, index), expected)
    assert torch.equal(same_sample(segments, None), segments.unsqueeze(1) == segments.unsqueeze(2))


def test_positional_router_refuses_packed_rows():
    model = tiny_wings(learner_mode="routed", router="positional")
    ids = torch.randint(8, 120, (1, 8))
    with pytest.raises(ValueError, match="positional router"):
        model(input_ids=ids, position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]]), use_cache=False)
