"""The lab's data files: LLaVA-format stage data from easy-vqa, and the IIT pools of both test worlds.

Everything is written as ordinary files (the formats `wings train`, `wings iit build` and
`wings eval` read), so every lab step is also a command a user could run by hand.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..evaluation.pools import MCItem, write_pool
from .text_world import TextSample, text_skill_samples
from .vision_world import COLOURS, SHAPES, VQASample, derive_image_labels, load_easy_vqa

DESCRIBE_PROMPT = "Describe the image."


@dataclass
class LabData:
    """Paths of the lab's data files. `image_folder` is the common root of the easy-vqa images."""

    image_folder: str
    stage1: str  # "<image>\nDescribe the image." -> "a red circle"
    stage2: str  # easy-vqa train questions, multimodal only (on purpose: see the report)
    stage2_text_share: str  # the same plus a share of text-skill samples
    vqa_test: str  # fixed held-out easy-vqa test questions
    text_pool: str  # held-out text items as multiple choice (IIT "T")
    visual_pool: str  # easy-vqa test questions as multiple choice (IIT "V")

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root)


def image_root(samples: Sequence[VQASample]) -> str:
    return os.path.commonpath([os.path.dirname(s.image_path) for s in samples])


def _llava(sample_id: str, image: str, question: str, answer: str) -> dict:
    return {"id": sample_id, "image": image, "conversations": [
        {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]}


def _text(sample_id: str, sample: TextSample) -> dict:
    return {"id": sample_id, "conversations": [
        {"from": "human", "value": sample.prompt}, {"from": "gpt", "value": sample.answer}]}


def describe_samples(train: Sequence[VQASample], root: str) -> list[dict]:
    """One caption per image whose shape and colour are both known: "a {colour} {shape}"."""
    labels = derive_image_labels(train)
    paths = {s.image_id: s.image_path for s in train}
    rows = []
    for image_id in sorted(paths):
        shape, colour = labels.shape.get(image_id, -1), labels.colour.get(image_id, -1)
        if shape >= 0 and colour >= 0:
            caption = f"a {COLOURS[colour]} {SHAPES[shape]}"
            rows.append(_llava(f"describe-{image_id}", _relative(paths[image_id], root), DESCRIBE_PROMPT, caption))
    return rows


def multiple_choice(sample: VQASample, rng: random.Random) -> tuple[list[str], int]:
    """Choices for an easy-vqa question: yes/no, or the gold answer among 3 others of its kind."""
    if sample.answer in ("yes", "no"):
        choices = ["yes", "no"]
    else:
        vocabulary = COLOURS if sample.answer in COLOURS else SHAPES
        others = [a for a in vocabulary if a != sample.answer]
        choices = rng.sample(others, min(3, len(others))) + [sample.answer]
        rng.shuffle(choices)
    return choices, choices.index(sample.answer)


def text_pool(items: Sequence[TextSample], seed: int) -> list[MCItem]:
    """Held-out text items as 4-way multiple choice; distractors are other answers of the same skill."""
    rng = random.Random(seed)
    answers = defaultdict(list)
    for item in items:
        if item.answer not in answers[item.skill]:
            answers[item.skill].append(item.answer)
    pool = []
    for i, item in enumerate(items):
        others = [a for a in answers[item.skill] if a != item.answer]
        choices = rng.sample(others, min(3, len(others))) + [item.answer]
        rng.shuffle(choices)
        if len(choices) >= 2:
            pool.append(MCItem(id=f"text-{i}", question=item.prompt, choices=tuple(choices),
                               answer=choices.index(item.answer), subject=item.skill))
    return pool


def visual_pool(samples: Sequence[VQASample], root: str, seed: int) -> list[MCItem]:
    rng = random.Random(seed)
    pool = []
    for i, sample in enumerate(samples):
        choices, answer = multiple_choice(sample, rng)
        subject = "yes/no" if sample.answer in ("yes", "no") else ("colour" if sample.answer in COLOURS else "shape")
        pool.append(MCItem(id=f"vqa-{i}", question=sample.question, choices=tuple(choices), answer=answer,
                           image=_relative(sample.image_path, root), subject=subject))
    return pool


def write_lab_data(
    folder: Path,
    text_items: Sequence[TextSample],
    n_vqa_test: int,
    text_share: float,
    n_stage2: int | None = None,
    seed: int = 0,
) -> LabData:
    """Write every data file of the lab into `folder` (deterministic for `seed`).

    `n_stage2` keeps that many stage-2 VQA questions (the lab trains on a fraction of an epoch;
    a smaller file is quicker to validate).
    """
    folder.mkdir(parents=True, exist_ok=True)
    train, test = load_easy_vqa("train"), load_easy_vqa("test")
    root = image_root(train + test)
    rng = random.Random(seed)

    def dump(name: str, rows: list) -> str:
        path = folder / name
        path.write_text(json.dumps(rows))
        return str(path)

    stage2_rows = [_llava(f"vqa-train-{i}", _relative(s.image_path, root), s.question, s.answer)
                   for i, s in enumerate(train)]
    rng.shuffle(stage2_rows)
    stage2_rows = stage2_rows[:n_stage2]
    n_text = int(len(stage2_rows) * text_share / (1 - text_share)) if text_share > 0 else 0
    text_rows = [_text(f"text-{i}", s) for i, s in enumerate(text_skill_samples(n_text, seed + 1, "train"))]
    mixed = stage2_rows + text_rows
    rng.shuffle(mixed)
    held_out = rng.sample(test, min(n_vqa_test, len(test)))
    vqa_rows = [_llava(f"vqa-test-{i}", _relative(s.image_path, root), s.question, s.answer)
                for i, s in enumerate(held_out)]
    text_pool_path = write_pool(text_pool(text_items, seed), folder / "text_pool.jsonl")
    visual_pool_path = write_pool(visual_pool(held_out, root, seed), folder / "visual_pool.jsonl")
    return LabData(
        image_folder=root,
        stage1=dump("stage1_describe.json", describe_samples(train, root)),
        stage2=dump("stage2_vqa.json", stage2_rows),
        stage2_text_share=dump("stage2_vqa_text_share.json", mixed),
        vqa_test=dump("vqa_test.json", vqa_rows),
        text_pool=str(text_pool_path),
        visual_pool=str(visual_pool_path),
    )
