"""A multimodal task whose answers need the LLM's text skills, and the frontier study's data files.

easy-vqa's own questions saturate at what the frozen encoder sees ("what colour is the shape?"),
whatever the LLM learns. The questions here combine what an image shows with a skill the chat LLM
already has, so answering them means the LLM must learn to use the visual tokens:

============== ========================================================== ===========
kind           prompt                                                     answer
============== ========================================================== ===========
add_corners    ``<image>`` What is 37 + the number of corners of the shape? ``40``
colour_fact    ``<image>`` Is the shape the favourite colour of tom?       ``yes``
second_image   ``<image><image>`` What colour is the shape in the second   ``teal``
               image? (or: What shape is in the second image?)
============== ========================================================== ===========

- `add_corners` needs addition (circle 0, rectangle 4, triangle 3 corners). The test split adds
  only numbers the train split never uses (`heldout_addends`), so it measures the arithmetic, not
  memorised (number, shape) pairs.
- `colour_fact` needs the memorised facts of `text_world.fact_table` (half the items say yes).
- `second_image` needs the position of an image in the prompt: the two images always differ in
  what is asked, so describing the first one is wrong.

Train items use easy-vqa's train images, test items its test images, both only images whose shape
and colour some easy-vqa question states (`derive_image_labels`).

`write_study_data` writes the study's files in the formats `wings train` and `wings iit` read. Its
stage-2 mix is multimodal in every sample: task questions, easy-vqa questions, and interleaved
dialogues shaped like IIT ("T,V", "T,T,V") whose text turns are short chatterbot-corpus exchanges
and whose image turn is a one-image task item or an easy-vqa question. The
text test never asks those exchanges, so the dialogues teach the interleaved format without
replaying the skills retention measures; the `*_text_share` models add that replay on purpose.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .data import LabDataWriter, llava_row, vqa_rows
from .text_world import TextSample, chatterbot_samples, fact_table, heldout_text_items
from .vision_world import COLOURS, SHAPES, Split, VQASample, derive_image_labels, load_easy_vqa

MM_KINDS: tuple[str, ...] = ("add_corners", "colour_fact", "second_image")
CORNERS: dict[str, int] = {"circle": 0, "rectangle": 4, "triangle": 3}
ADDENDS = range(10, 90)
_N_HELDOUT_ADDENDS = 16
_ADDEND_SPLIT_SEED = 7
IIT_TRAIN_SHAPES: tuple[str, ...] = ("T,V", "T,T,V")
"""Shapes of the interleaved training dialogues (text turns before an image turn)."""
CHAT_MAX_CHARS = 30
"""Longest chatterbot exchange (prompt + reply) in a dialogue: a batch is padded to its longest
sample, so a few long dialogues would double the cost of every training step."""


@dataclass(frozen=True)
class LabelledImage:
    """An easy-vqa image whose shape and colour are both known; `path` is absolute."""

    image_id: int
    path: str
    shape: str
    colour: str


@dataclass(frozen=True)
class MMItem:
    """One task question: `question` holds one ``<image>`` marker per path of `images`, first."""

    question: str
    answer: str
    images: tuple[str, ...]
    kind: str


def heldout_addends() -> frozenset[int]:
    """The numbers that only the test split's `add_corners` items add (16 of 10..89, fixed)."""
    return frozenset(random.Random(_ADDEND_SPLIT_SEED).sample(list(ADDENDS), _N_HELDOUT_ADDENDS))


def labelled_images(samples: Sequence[VQASample]) -> list[LabelledImage]:
    """The images of `samples` with both labels known, sorted by id."""
    labels = derive_image_labels(samples)
    paths = {s.image_id: s.image_path for s in samples}
    return [
        LabelledImage(i, paths[i], SHAPES[labels.shape[i]], COLOURS[labels.colour[i]])
        for i in sorted(paths)
        if labels.shape.get(i, -1) >= 0 and labels.colour.get(i, -1) >= 0
    ]


def _marker(n: int) -> str:
    return "<image>\n" * n


def _item(kind: str, rng: random.Random, images: Sequence[LabelledImage], split: Split,
          facts: dict[tuple[str, str], str]) -> MMItem:  # fmt: skip
    if kind == "add_corners":
        image = rng.choice(images)
        held = heldout_addends()
        pool = sorted(held) if split == "test" else [n for n in ADDENDS if n not in held]
        n = rng.choice(pool)
        question = f"What is {n} + the number of corners of the shape?"
        return MMItem(_marker(1) + question, str(n + CORNERS[image.shape]), (image.path,), kind)
    if kind == "colour_fact":
        image = rng.choice(images)
        names = sorted({name for name, _ in facts})
        matching = [n for n in names if facts[(n, "colour")] == image.colour]
        other = [n for n in names if facts[(n, "colour")] != image.colour]
        say_yes = bool(matching) and rng.random() < 0.5
        name = rng.choice(matching if say_yes else other)
        question = f"Is the shape the favourite colour of {name}?"
        return MMItem(_marker(1) + question, "yes" if say_yes else "no", (image.path,), kind)
    if kind == "second_image":
        first = rng.choice(images)
        ask_colour = rng.random() < 0.5
        attribute = "colour" if ask_colour else "shape"
        second = rng.choice([i for i in images if getattr(i, attribute) != getattr(first, attribute)])
        question = "What colour is the shape in the second image?" if ask_colour else "What shape is in the second image?"
        return MMItem(_marker(2) + question, getattr(second, attribute), (first.path, second.path), kind)
    raise ValueError(f"unknown multimodal task kind {kind!r}; known kinds: {', '.join(MM_KINDS)}")


def mm_task_items(n: int, seed: int, split: Split, images: Sequence[LabelledImage] | None = None,
                  kinds: Sequence[str] = MM_KINDS) -> list[MMItem]:  # fmt: skip
    """`n` task items, the kinds in turn (balanced), drawn from `split`'s labelled images.

    The same arguments always give the same list. `images` defaults to every labelled image of
    the easy-vqa split (pass them to avoid reloading easy-vqa).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if images is None:
        images = labelled_images(load_easy_vqa(split))
    if len(images) < 2:
        raise ValueError(f"mm_task_items: {len(images)} labelled {split} image(s); need at least 2")
    rng = random.Random(f"mm-task|{seed}|{split}")
    facts = fact_table()
    return [_item(kinds[k % len(kinds)], rng, images, split, facts) for k in range(n)]


# ------------------------------------------------------------------------------------------------
# LLaVA-format rows
def interleaved_dialogue(sample_id: str, shape: str, chats: Sequence[TextSample], visual: MMItem, root: str) -> dict:
    """An IIT-shaped training dialogue: one chat exchange per "T" of `shape`, then the image turn."""
    kinds = shape.split(",")
    if kinds[-1] != "V" or set(kinds[:-1]) - {"T"} or len(chats) != len(kinds) - 1:
        raise ValueError(f"interleaved_dialogue {sample_id}: shape {shape!r} needs T turns then one V "
                         f"and {len(kinds) - 1} chat exchange(s), got {len(chats)}")
    turns = [(c.prompt, c.answer) for c in chats] + [(visual.question, visual.answer)]
    return llava_row(sample_id, turns, visual.images, root)


def _vqa_item(sample: VQASample) -> MMItem:
    return MMItem(_marker(1) + sample.question, sample.answer, (sample.image_path,), "easy_vqa")


@dataclass
class StudyData:
    """Paths of the frontier study's data files (`image_folder` is the easy-vqa image root)."""

    image_folder: str
    stage1: str  # "<image>\nDescribe the image." -> "a red circle" (as in the default lab)
    stage2: str  # task + easy-vqa questions + interleaved dialogues: an image in every sample
    stage2_text_share: str  # the same plus a share of text-skill samples
    mm_test: str  # held-out task items (test images; add_corners with held-out addends)
    vqa_test: str  # held-out easy-vqa test questions
    text_pool: str  # held-out text items as multiple choice (IIT "T")
    visual_pool: str  # the easy-vqa test questions as multiple choice (IIT "V")
    mix: dict  # what stage 2 holds, counted

    def to_json(self) -> dict:
        return dict(self.__dict__)


def write_study_data(folder: Path, n_stage2: int, n_mm_test_per_kind: int, n_vqa_test: int, text_items: int,
                     text_share: float, mm_share: float = 0.4, interleaved_share: float = 0.25,
                     seed: int = 0) -> StudyData:  # fmt: skip
    """Write every data file of the study into `folder` (deterministic for `seed`).

    Stage 2 holds `n_stage2` samples: `mm_share` task items, `interleaved_share` IIT-shaped
    dialogues (their image turn a task item or an easy-vqa question, half each) and easy-vqa
    questions for the rest. The text-share file adds text-skill samples so that they make up
    `text_share` of it.
    """
    if not 0 <= mm_share + interleaved_share <= 1:
        raise ValueError(f"mm_share + interleaved_share must be in [0, 1], got {mm_share} + {interleaved_share}")
    writer = LabDataWriter(folder)
    train, root = writer.train, writer.root
    rng = random.Random(f"study-data|{seed}")
    train_images, test_images = labelled_images(train), labelled_images(writer.test)

    n_mm = round(n_stage2 * mm_share)
    n_dialogues = round(n_stage2 * interleaved_share)
    n_vqa = n_stage2 - n_mm - n_dialogues
    mm_train = mm_task_items(n_mm, seed, "train", train_images)
    # Dialogue image turns ask about one image (the longest samples set every batch's width).
    mm_dialogue = mm_task_items(n_dialogues, seed + 1, "train", train_images, kinds=MM_KINDS[:2])
    vqa_train = rng.sample(train, n_vqa + n_dialogues)
    chats = [c for c in chatterbot_samples() if len(c.prompt) + len(c.answer) <= CHAT_MAX_CHARS]
    rows = [llava_row(f"mm-train-{i}", [(m.question, m.answer)], m.images, root) for i, m in enumerate(mm_train[:n_mm])]
    rows += vqa_rows("vqa-train", vqa_train[:n_vqa], root)
    for k in range(n_dialogues):
        shape = IIT_TRAIN_SHAPES[k % len(IIT_TRAIN_SHAPES)]
        visual = mm_dialogue[k] if k % 4 < 2 else _vqa_item(vqa_train[n_vqa + k])
        context = rng.sample(chats, shape.count("T")) if chats else []
        if not context:  # without chatterbot-corpus the dialogue degrades to its image turn
            rows.append(llava_row(f"iit-train-{k}", [(visual.question, visual.answer)], visual.images, root))
        else:
            rows.append(interleaved_dialogue(f"iit-train-{k}", shape, context, visual, root))
    rng.shuffle(rows)
    mixed = writer.with_text_share(rows, text_share, seed, rng)

    mm_test = mm_task_items(n_mm_test_per_kind * len(MM_KINDS), seed, "test", test_images)
    mm_rows = [llava_row(f"mm-test-{m.kind}-{i}", [(m.question, m.answer)], m.images, root) for i, m in enumerate(mm_test)]
    held_out, vqa_test = writer.held_out_vqa(n_vqa_test, rng)
    text_pool, visual_pool = writer.pools(heldout_text_items(text_items, seed=0), held_out, seed)
    return StudyData(
        image_folder=root,
        stage1=writer.stage1(),
        stage2=writer.dump("stage2_mix.json", rows),
        stage2_text_share=writer.dump("stage2_mix_text_share.json", mixed),
        mm_test=writer.dump("mm_test.json", mm_rows),
        vqa_test=vqa_test,
        text_pool=text_pool,
        visual_pool=visual_pool,
        mix={"task": n_mm, "easy_vqa": n_vqa, "interleaved": n_dialogues if chats else 0,
             "interleaved_text_turns": sum(r["id"].startswith("iit-train") and len(r["conversations"]) // 2 - 1
                                           for r in rows),
             "text_share_samples": len(mixed) - len(rows)},
    )
