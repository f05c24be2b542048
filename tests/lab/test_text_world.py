"""Tests for the lab's text world: generators, tokenizer, loss mask, pretraining, evaluation."""

from __future__ import annotations

import os
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from wings.lab.text_world import (
    LETTERS,
    SKILLS,
    PretrainMix,
    TextSample,
    _length_buckets,
    build_lab_tokenizer,
    chat_texts,
    chatterbot_samples,
    encode_chat_batch,
    evaluate_text,
    fact_table,
    heldout_addition_pairs,
    heldout_text_items,
    make_tiny_llm,
    pretrain_llm,
    shakespeare_continuations,
    text_skill_samples,
)
from wings.lab.vision_world import COLOURS, SHAPES


@pytest.fixture(scope="module")
def tokenizer():
    return build_lab_tokenizer(seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_generators_are_deterministic_per_seed():
    assert text_skill_samples(200, seed=3) == text_skill_samples(200, seed=3)
    assert text_skill_samples(200, seed=3) != text_skill_samples(200, seed=4)
    assert heldout_text_items(80, seed=1) == heldout_text_items(80, seed=1)
    assert PretrainMix(real_text=[TextSample("hi", "hello", "chat")])(64, 5) == PretrainMix(
        real_text=[TextSample("hi", "hello", "chat")]
    )(64, 5)


def test_every_skill_is_generated_with_correct_answers():
    samples = text_skill_samples(800, seed=0)
    assert set(Counter(s.skill for s in samples)) == set(SKILLS)
    facts = fact_table()
    for s in samples:
        words = s.prompt.rstrip("?").split()
        if s.skill == "add":
            assert int(s.answer) == int(words[2]) + int(words[4])
        elif s.skill == "reverse":
            assert s.answer == words[1][::-1] and 3 <= len(words[1]) <= 6
        elif s.skill == "copy":
            assert s.answer == words[1]
        elif s.skill == "count":
            assert int(s.answer) == len(words[-1])
        elif s.skill == "compare":
            assert s.answer == ("yes" if int(words[1]) > int(words[4]) else "no")
        elif s.skill == "next_letter":
            assert ord(s.answer) == ord(words[-1]) + 1
        elif s.skill == "fact":
            assert facts[(words[-1], words[4])] == s.answer
        elif s.skill == "describe":
            assert s.answer == f"a {words[1]} {words[2]}"
            assert words[1] in COLOURS and words[2] in SHAPES


def test_facts_are_fixed_and_cover_20_names_by_4_attributes():
    facts = fact_table()
    assert len(facts) == 80 and facts == fact_table()


def _pair(sample: TextSample) -> tuple[int, int]:
    words = sample.prompt.rstrip("?").split()
    return int(words[2]), int(words[4])


def test_addition_pairs_are_disjoint_between_train_and_test():
    heldout = heldout_addition_pairs()
    assert len(heldout) == 300
    train = [_pair(s) for s in text_skill_samples(3000, seed=0, skills=("add",))]
    test = [_pair(s) for s in text_skill_samples(500, seed=0, split="test", skills=("add",))]
    assert not set(train) & heldout
    assert set(test) <= heldout
    assert len(set(test)) > 150  # the test split really samples the held-out set


def test_letter_words_are_disjoint_between_train_and_test():
    def words(split):
        samples = text_skill_samples(1500, seed=1, split=split, skills=("reverse", "copy"))
        return {s.prompt.split()[1] for s in samples}

    assert not words("train") & words("test")


def test_heldout_items_are_balanced_over_every_skill():
    items = heldout_text_items(400, seed=0)
    assert len(items) == 400
    assert Counter(s.skill for s in items) == {skill: 50 for skill in SKILLS}
    adds = [_pair(s) for s in items if s.skill == "add"]
    assert set(adds) <= heldout_addition_pairs() and len(set(adds)) == 50


def test_letter_words_tokenize_one_letter_per_token(tokenizer):
    vocab = tokenizer.get_vocab()
    for letter in LETTERS:
        assert [t for t in vocab if letter in t] == [letter]
    for s in text_skill_samples(200, seed=0, skills=("reverse", "count")):
        word = s.prompt.rstrip("?").split()[-1]
        assert tokenizer.tokenize(word) == list(word)
        # In context too: the space before the word stays a token of its own.
        assert "".join(tokenizer.tokenize(s.prompt)).count(word) == 1
        assert all(t in tokenizer.tokenize(s.prompt) for t in word)
    assert tokenizer.tokenize("Reverse: KBZ") == ["Reverse", ":", "Ġ", "K", "B", "Z"]


def test_loss_mask_covers_answer_and_eos_only(tokenizer):
    samples = [
        TextSample("What is 12 + 30?", "42", "add"),
        TextSample("Reverse: KBZF", "FZBK", "reverse"),
        TextSample("Describe: red circle", "a red circle", "describe"),
    ]
    batch = encode_chat_batch(samples, tokenizer)
    full = tokenizer(chat_texts(samples, tokenizer), add_special_tokens=False)["input_ids"]
    for i, sample in enumerate(samples):
        n = int(batch["attention_mask"][i].sum())
        # Tokenizing prompt and answer separately gives the same ids as the whole text.
        assert batch["input_ids"][i, :n].tolist() == full[i]
        labels = batch["labels"][i]
        kept = labels[labels != -100].tolist()
        assert kept[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(kept[:-1]) == sample.answer
        first = int((labels != -100).nonzero()[0])
        # Everything up to the assistant header is masked, and nothing after the answer.
        assert tokenizer.decode(batch["input_ids"][i, :first]).endswith("<|im_start|>assistant\n")
        assert (labels[:first] == -100).all() and (labels[n:] == -100).all()
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()


def test_length_buckets_give_the_hf_loss_gradient(tokenizer):
    samples = text_skill_samples(12, seed=0) + [
        TextSample("Continue: " + "so fair and foul a day " * 3, "I have not seen " * 3, "continue")
    ]
    batch = encode_chat_batch(samples, tokenizer)
    buckets = _length_buckets(batch)
    assert len(buckets) == 2 and sum(len(b["input_ids"]) for b in buckets) == 13
    model = make_tiny_llm(tokenizer, hidden=32, layers=1, heads=2, ffn=64)
    model(**batch).loss.backward()  # Hugging Face's own token-mean loss on the unsplit batch
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    n_targets = int((batch["labels"][:, 1:] != -100).sum())
    for b in buckets:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten(), reduction="sum"
        )
        (loss / n_targets).backward()
    for p, ref in zip(model.parameters(), reference):
        torch.testing.assert_close(p.grad, ref, atol=1e-5, rtol=1e-4)


def test_tiny_llm_has_the_lab_size(tokenizer):
    model = make_tiny_llm(tokenizer)
    n = sum(p.numel() for p in model.parameters())
    assert 0.9e6 < n < 1.1e6
    assert not model.config.tie_word_embeddings
    assert model.config._attn_implementation == "sdpa"
    again = make_tiny_llm(tokenizer)
    assert torch.equal(model.lm_head.weight, again.lm_head.weight)


def test_short_pretraining_reduces_the_loss(tokenizer):
    model = make_tiny_llm(tokenizer, hidden=64, layers=2, heads=2, ffn=128, seed=0)
    result = pretrain_llm(
        model, tokenizer, text_skill_samples, steps=60, batch_size=16, lr=3e-3, progress=False
    )
    assert len(result.losses) == 60
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)


def test_pretraining_accepts_a_fixed_sample_list(tokenizer):
    model = make_tiny_llm(tokenizer, hidden=32, layers=1, heads=2, ffn=64)
    samples = text_skill_samples(20, seed=0)
    result = pretrain_llm(model, tokenizer, samples, steps=3, batch_size=8, progress=False)
    assert len(result.losses) == 3 and not model.training


class _GoldModel:
    """A stand-in for an LLM: `generate` appends the gold answer (and eos) to each prompt."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, items, wrong_skill: str | None = None):
        self.tokenizer = tokenizer
        self.answers = {}
        for text, item in zip(
            tokenizer.apply_chat_template(
                [[{"role": "user", "content": s.prompt}] for s in items],
                tokenize=False,
                add_generation_prompt=True,
            ),
            items,
        ):
            answer = "no idea" if item.skill == wrong_skill else item.answer
            self.answers[text] = answer

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = self.tokenizer.decode(ids[mask.bool()])
            new = self.tokenizer(self.answers[prompt], add_special_tokens=False)["input_ids"]
            new = (new + [self.tokenizer.eos_token_id])[:max_new_tokens]
            rows.append(ids.tolist() + new)
        width = max(len(r) for r in rows)
        return torch.tensor([r + [self.tokenizer.pad_token_id] * (width - len(r)) for r in rows])


def test_evaluate_text_scores_gold_answers_as_perfect(tokenizer):
    items = heldout_text_items(64, seed=0)
    result = evaluate_text(_GoldModel(tokenizer, items), tokenizer, items, batch_size=10)
    assert result["text_acc"] == 1.0
    assert set(result["per_skill"]) == set(SKILLS)
    assert result["predictions"] == [s.answer for s in items]  # order preserved across batches

    wrong = evaluate_text(_GoldModel(tokenizer, items, wrong_skill="add"), tokenizer, items)
    assert wrong["per_skill"]["add"] == 0.0
    assert wrong["text_acc"] == pytest.approx(1 - 8 / 64)


def test_evaluate_text_runs_a_real_model(tokenizer):
    model = make_tiny_llm(tokenizer, hidden=32, layers=1, heads=2, ffn=64)
    model.train()
    items = heldout_text_items(16, seed=0)
    result = evaluate_text(model, tokenizer, items, batch_size=8)
    assert 0.0 <= result["text_acc"] <= 1.0 and len(result["predictions"]) == 16
    assert model.training  # mode restored


def test_real_text_loads_or_skips_gracefully(tmp_path):
    chat = chatterbot_samples()
    assert len(chat) > 1000 and all(s.skill == "chat" and s.prompt and s.answer for s in chat)
    assert isinstance(shakespeare_continuations(), list)  # [] when the package has no text
    play = tmp_path / "play.txt"
    play.write_text("ACT I.\n\nHam.\nTo be, or not to be, that is the question:\n"
                    "Whether 'tis nobler in the mind to suffer\n\n[Exit.]\n")  # fmt: skip
    pairs = shakespeare_continuations(tmp_path)
    assert pairs == [
        TextSample(
            "Continue: To be, or not to be, that is the question:",
            "Whether 'tis nobler in the mind to suffer",
            "continue",
        )
    ]
    assert shakespeare_continuations(tmp_path / "missing") == []


def test_pretrain_mix_respects_the_real_text_share():
    real = [TextSample(f"q{i}", f"a{i}", "chat") for i in range(10)]
    samples = PretrainMix(real_text=real, real_text_share=0.25)(4000, seed=0)
    share = sum(s.skill == "chat" for s in samples) / len(samples)
    assert 0.2 < share < 0.3
    assert all(s.skill != "chat" for s in PretrainMix(real_text=[])(100, seed=0))
