"""The lab's data files: LLaVA-format stage data from easy-vqa, and the IIT pools of both test worlds.

Everything is written as ordinary files (the formats `wings train`, `wings iit build` and
`wings eval` read), so every lab step is also a command a user could run by hand. The default lab
(`write_lab_data`) and the frontier study (`wings.lab.mm_task.write_study_data`) differ only in their
stage-2 mix; the rest (rows, captions, the text share, held-out questions, pools) is a `LabDataWriter`.
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


def llava_row(sample_id: str, turns: Sequence[tuple[str, str]], images: Sequence[str], root: str) -> dict:
    """A LLaVA-format sample from (user, assistant) turns; image paths made relative to `root`."""
    row: dict = {"id": sample_id, "conversations": [
        message for user, reply in turns for message in ({"from": "human", "value": user}, {"from": "gpt", "value": reply})]}
    if images:
        row["image"] = [_relative(p, root) for p in images]
    return row


def vqa_rows(prefix: str, samples: Sequence[VQASample], root: str) -> list[dict]:
    """easy-vqa questions as one-image LLaVA rows `{prefix}-{i}`."""
    return [llava_row(f"{prefix}-{i}", [(f"<image>\n{s.question}", s.answer)], [s.image_path], root)
            for i, s in enumerate(samples)]


def describe_samples(train: Sequence[VQASample], root: str) -> list[dict]:
    """One caption per image whose shape and colour are both known: "a {colour} {shape}"."""
    labels = derive_image_labels(train)
    paths = {s.image_id: s.image_path for s in train}
    rows = []
    for image_id in sorted(paths):
        shape, colour = labels.shape.get(image_id, -1), labels.colour.get(image_id, -1)
        if shape >= 0 and colour >= 0:
            caption = f"a {COLOURS[colour]} {SHAPES[shape]}"
            rows.append(llava_row(f"describe-{image_id}", [(f"<image>\n{DESCRIBE_PROMPT}", caption)], [paths[image_id]], root))
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


class LabDataWriter:
    """Writes one lab's data files into `folder`: what the default lab and the frontier study share.

    Loads both easy-vqa splits once (`train`, `test`; `root` is their images' common folder).
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.train, self.test = load_easy_vqa("train"), load_easy_vqa("test")
        self.root = image_root(self.train + self.test)

    def dump(self, name: str, rows: list) -> str:
        """rows as the JSON file `name` in the folder; returns its path."""
        path = self.folder / name
        path.write_text(json.dumps(rows))
        return str(path)

    def stage1(self) -> str:
        """The stage-1 captions ("<image>\nDescribe the image." -> "a red circle")."""
        return self.dump("stage1_describe.json", describe_samples(self.train, self.root))

    def with_text_share(self, rows: list[dict], text_share: float, seed: int, rng: random.Random) -> list[dict]:
        """rows plus text-skill samples (seed + 1, train split) making up `text_share` of the result, shuffled."""
        n_text = int(len(rows) * text_share / (1 - text_share)) if text_share > 0 else 0
        text_rows = [llava_row(f"text-{i}", [(s.prompt, s.answer)], [], self.root)
                     for i, s in enumerate(text_skill_samples(n_text, seed + 1, "train"))]
        mixed = rows + text_rows
        rng.shuffle(mixed)
        return mixed

    def held_out_vqa(self, n: int, rng: random.Random) -> tuple[list[VQASample], str]:
        """`n` easy-vqa test questions drawn with `rng`, and the path of vqa_test.json holding them."""
        held_out = rng.sample(self.test, min(n, len(self.test)))
        return held_out, self.dump("vqa_test.json", vqa_rows("vqa-test", held_out, self.root))

    def pools(self, text_items: Sequence[TextSample], held_out: Sequence[VQASample], seed: int) -> tuple[str, str]:
        """The IIT pools: text items ("T") and the held-out easy-vqa questions ("V") as multiple choice."""
        text = write_pool(text_pool(text_items, seed), self.folder / "text_pool.jsonl")
        visual = write_pool(visual_pool(held_out, self.root, seed), self.folder / "visual_pool.jsonl")
        return str(text), str(visual)


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
    writer = LabDataWriter(folder)
    rng = random.Random(seed)
    stage2_rows = vqa_rows("vqa-train", writer.train, writer.root)
    rng.shuffle(stage2_rows)
    stage2_rows = stage2_rows[:n_stage2]
    mixed = writer.with_text_share(stage2_rows, text_share, seed, rng)
    held_out, vqa_test = writer.held_out_vqa(n_vqa_test, rng)
    text_pool_path, visual_pool_path = writer.pools(text_items, held_out, seed)
    return LabData(
        image_folder=writer.root,
        stage1=writer.stage1(),
        stage2=writer.dump("stage2_vqa.json", stage2_rows),
        stage2_text_share=writer.dump("stage2_vqa_text_share.json", mixed),
        vqa_test=vqa_test,
        text_pool=text_pool_path,
        visual_pool=visual_pool_path,
    )
