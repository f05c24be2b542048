"""Tests for the IIT builder, IIT files, rendering, answer parsing and scoring."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from wings.data.llava import IMAGE_MARKER as IMAGE_TOKEN
from wings.evaluation.iit import (
    DEFAULT_SETTINGS,
    IITFormatError,
    build_iit,
    dialogue_messages,
    load_iit,
    parse_setting,
    summarize_iit,
    write_iit,
)
from wings.evaluation.multiple_choice import accuracy_with_ci, format_question, is_correct, parse_choice
from wings.evaluation.pools import MCItem, PoolFormatError, load_pool

# Three topics with disjoint vocabularies: a grouping by similarity must keep them apart.
TOPICS = {
    "astro": "planet orbit telescope galaxy comet nebula asteroid supernova eclipse meteor".split(),
    "cook": "recipe oven flour butter simmer garlic pastry skillet dough saffron".split(),
    "sport": "goalkeeper referee penalty stadium dribble tackle offside striker league trophy".split(),
}
SHARED = "which statement about the following is most accurate".split()


def _question(topic: str, rng: random.Random) -> str:
    return " ".join(rng.sample(TOPICS[topic], 4) + rng.sample(SHARED, 3)) + "?"


def make_pool(kind: str, per_topic: int, seed: int = 0) -> list[MCItem]:
    rng = random.Random(seed)
    items = []
    for topic in TOPICS:
        for i in range(per_topic):
            choices = tuple(" ".join(rng.sample(TOPICS[topic], 2)) for _ in range(4))
            items.append(
                MCItem(
                    id=f"{kind}-{topic}-{i}",
                    question=_question(topic, rng),
                    choices=choices,
                    answer=rng.randrange(4),
                    image=f"images/{topic}-{i}.png" if kind == "visual" else None,
                    # No subject: the grouping must come from the question text itself.
                )
            )
    rng.shuffle(items)  # pool order must not reveal the topic
    return items


def topic_of(turn: dict) -> str:
    return str(turn["item_id"]).split("-")[1]


@pytest.fixture(scope="module")
def pools() -> tuple[list[MCItem], list[MCItem]]:
    return make_pool("text", 20, seed=1), make_pool("visual", 12, seed=2)


# ------------------------------------------------------------------------------------------
# Building
# ------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_files(pools, tmp_path: Path) -> None:
    text, visual = pools
    a = write_iit(build_iit(text, visual, per_setting=10, seed=3), tmp_path / "a.jsonl")
    b = write_iit(build_iit(text, visual, per_setting=10, seed=3), tmp_path / "b.jsonl")
    assert a.read_bytes() == b.read_bytes()


def test_different_seed_gives_different_dialogues(pools) -> None:
    text, visual = pools
    a = build_iit(text, visual, per_setting=10, seed=3)
    b = build_iit(text, visual, per_setting=10, seed=4)
    assert a != b


def test_setting_dialogues_do_not_depend_on_other_settings(pools) -> None:
    text, visual = pools
    alone = build_iit(text, visual, settings=("T,V",), per_setting=8, seed=5)
    together = build_iit(text, visual, settings=DEFAULT_SETTINGS, per_setting=8, seed=5)
    assert alone == [d for d in together if d["setting"] == "T,V"]


def test_every_dialogue_follows_the_schema(pools, tmp_path: Path) -> None:
    text, visual = pools
    dialogues = build_iit(text, visual, per_setting=10, seed=0)
    assert [d["setting"] for d in dialogues] == [s for s in DEFAULT_SETTINGS for _ in range(10)]
    assert len({d["id"] for d in dialogues}) == len(dialogues)
    by_id = {("T", i.id): i for i in text} | {("V", i.id): i for i in visual}
    for d in dialogues:
        assert set(d) == {"id", "setting", "turns"}
        assert d["id"].rsplit("-", 1)[0] == d["setting"]
        kinds = d["setting"].split(",")
        assert [t["kind"] for t in d["turns"]] == kinds
        for turn in d["turns"]:
            assert set(turn) == {
                "kind",
                "item_id",
                "question",
                "choices",
                "answer",
                "image",
                "subject",
            }
            item = by_id[(turn["kind"], turn["item_id"])]
            assert turn["question"] == item.question
            assert turn["choices"] == list(item.choices)
            assert turn["answer"] == item.answer
            assert turn["image"] == item.image
            assert (turn["image"] is None) == (turn["kind"] == "T")
        keys = [(t["kind"], t["item_id"]) for t in d["turns"]]
        assert len(set(keys)) == len(keys), "an item repeats inside one dialogue"
    # The file round-trips through the validating loader.
    assert load_iit(write_iit(dialogues, tmp_path / "iit.jsonl")) == dialogues


def test_scored_items_are_used_once_per_setting(pools) -> None:
    text, visual = pools
    dialogues = build_iit(text, visual, per_setting=12, seed=0)
    for setting in DEFAULT_SETTINGS:
        scored = [d["turns"][-1]["item_id"] for d in dialogues if d["setting"] == setting]
        assert len(scored) == 12 and len(set(scored)) == 12


def test_context_turns_share_the_scored_topic(pools) -> None:
    text, visual = pools
    dialogues = build_iit(text, visual, per_setting=30, seed=0)
    pairs = [
        (topic_of(turn), topic_of(d["turns"][-1])) for d in dialogues for turn in d["turns"][:-1]
    ]
    assert len(pairs) > 100
    same = sum(a == b for a, b in pairs) / len(pairs)
    assert same > 0.9  # chance is 1/3


def test_context_choice_varies_with_seed(pools) -> None:
    # Context is drawn among the top-k neighbours, not always the single nearest one.
    text, visual = pools
    contexts = set()
    for seed in range(6):
        first = build_iit(text, visual, settings=("T,T",), per_setting=60, seed=seed)
        contexts |= {(d["turns"][-1]["item_id"], d["turns"][0]["item_id"]) for d in first}
    assert len(contexts) > 60 * 2


def test_small_pool_warns_and_uses_every_item(pools, caplog) -> None:
    text, visual = pools
    with caplog.at_level(logging.WARNING, logger="wings.evaluation.iit"):
        dialogues = build_iit(text, visual, settings=("V",), per_setting=1000, seed=0)
    assert len(dialogues) == len(visual)
    assert {d["turns"][-1]["item_id"] for d in dialogues} == {i.id for i in visual}
    assert "asked for 1000 dialogues but the visual pool has 36 items" in caplog.text


@pytest.mark.parametrize("visual_pool", [None, []])
def test_visual_setting_without_visual_pool_raises(pools, visual_pool) -> None:
    text, _ = pools
    with pytest.raises(
        ValueError, match=r"setting 'T,T,V' needs visual \(V\) items but the visual pool is empty"
    ):
        build_iit(text, visual_pool, per_setting=2)
    # Text-only settings do not need a visual pool.
    assert len(build_iit(text, visual_pool, settings=("T", "T,T"), per_setting=2)) == 4


def test_custom_settings(pools) -> None:
    text, visual = pools
    dialogues = build_iit(
        text, visual, settings=("V,T", "V,V,T", " t , v ", "V,T,V,T"), per_setting=3
    )
    assert [d["setting"] for d in dialogues[::3]] == ["V,T", "V,V,T", "T,V", "V,T,V,T"]
    for d in dialogues:
        assert [t["kind"] for t in d["turns"]] == d["setting"].split(",")
    assert build_iit(text, visual, settings="V,T", per_setting=2)[0]["setting"] == "V,T"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("T,X", "setting 'T,X': turn 2 is 'X'"),
        ("T,,V", "setting 'T,,V': turn 2 is ''"),
        ("", "setting must be a non-empty string"),
        ("TV", "setting 'TV': turn 1 is 'TV'"),
    ],
)
def test_bad_setting_strings(pools, setting: str, message: str) -> None:
    text, visual = pools
    with pytest.raises(ValueError, match=message):
        build_iit(text, visual, settings=(setting,))


def test_parse_setting() -> None:
    assert parse_setting("t, V ,T") == ("T", "V", "T")


def test_repeated_settings_raise(pools) -> None:
    text, visual = pools
    with pytest.raises(ValueError, match=r"settings repeat \['T,V'\]"):
        build_iit(text, visual, settings=("T,V", "t,v"))


def test_pool_too_small_for_one_dialogue_raises() -> None:
    text = make_pool("text", 1)[:2]
    with pytest.raises(
        ValueError, match="needs 3 distinct T items per dialogue but the text pool has 2"
    ):
        build_iit(text, None, settings=("T,T,T",))


def test_item_of_the_wrong_kind_raises(pools) -> None:
    text, visual = pools
    with pytest.raises(ValueError, match=r"text pool item 0 \(id 'visual-.*'\) has an image"):
        build_iit(visual + text, visual, settings=("T",))
    with pytest.raises(ValueError, match=r"visual pool item 0 \(id 'text-.*'\) has no image"):
        build_iit(text, text, settings=("V",))


# ------------------------------------------------------------------------------------------
# Pool files
# ------------------------------------------------------------------------------------------

GOOD = {"id": "a", "question": "What orbits a planet?", "choices": ["moon", "oven"], "answer": 0}


def _pool_file(tmp_path: Path, bad_line: str, name: str = "pool.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(GOOD) + "\n" + bad_line + "\n", encoding="utf-8")
    return path


def _item(**changes) -> str:
    obj = {**GOOD, "id": "b", **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not ...})


@pytest.mark.parametrize(
    ("kind", "line", "message"),
    [
        ("text", '{"id": "b", "question": ', "malformed JSON on line 2"),
        ("text", "[1, 2]", "line 2: expected a JSON object, got list"),
        ("text", _item(question=...), "line 2 (id 'b'): missing key 'question'"),
        ("text", _item(id=...), "line 2: missing key 'id'"),
        ("text", _item(question="  "), "line 2 (id 'b'): 'question' must be a non-empty string"),
        ("text", _item(choices=[]), "line 2 (id 'b'): 'choices' is empty"),
        (
            "text",
            _item(choices=["only"]),
            "line 2 (id 'b'): 'choices' has 1 entry (need at least 2)",
        ),
        (
            "text",
            _item(choices="moon"),
            "line 2 (id 'b'): 'choices' must be a list of strings, got str",
        ),
        ("text", _item(choices=["x", 3]), "line 2 (id 'b'): 'choices[1]' is not a string: 3"),
        (
            "text",
            _item(answer=2),
            "line 2 (id 'b'): 'answer' 2 out of range for 2 choices (valid 0..1)",
        ),
        ("text", _item(answer=-1), "line 2 (id 'b'): 'answer' -1 out of range"),
        (
            "text",
            _item(answer="A"),
            "line 2 (id 'b'): 'answer' must be an int index into choices, got str 'A'",
        ),
        ("text", _item(answer=True), "'answer' must be an int index into choices, got bool True"),
        ("text", _item(id=""), "line 2 (id ''): 'id' must be a non-empty string or an int"),
        ("text", _item(subject=3), "line 2 (id 'b'): 'subject' must be a string or absent, got 3"),
        ("text", _item(image="x.png"), "line 2 (id 'b'): text item has an 'image' ('x.png')"),
        ("visual", _item(image=...), "line 2 (id 'b'): visual item without 'image'"),
        ("text", _item(id="a"), "line 2 (id 'a'): duplicate id 'a' (first seen at line 1)"),
    ],
)
def test_bad_pool_items_are_named(tmp_path: Path, kind: str, line: str, message: str) -> None:
    if kind == "visual":
        # Line 1 must be valid for a visual pool too.
        path = tmp_path / "pool.jsonl"
        path.write_text(
            json.dumps({**GOOD, "image": "a.png"}) + "\n" + line + "\n", encoding="utf-8"
        )
    else:
        path = _pool_file(tmp_path, line)
    with pytest.raises(PoolFormatError) as info:
        load_pool(path, kind)
    text = str(info.value)
    assert str(path) in text
    assert message in text
    assert isinstance(info.value, ValueError)
    assert len(info.value.problems) == 1


def test_all_bad_items_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    lines = [json.dumps(GOOD), "", _item(id="c", answer=9), "not json", _item(id="d", choices=[])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(PoolFormatError) as info:
        load_pool(path, "text")
    assert info.value.problems == [
        "line 3 (id 'c'): 'answer' 9 out of range for 2 choices (valid 0..1)",
        "malformed JSON on line 4: Expecting value (column 1)",
        "line 5 (id 'd'): 'choices' is empty (need at least 2)",
    ]


def test_json_list_pools_name_the_item_index(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "id": 7, "answer": 5}]), encoding="utf-8")
    with pytest.raises(PoolFormatError, match=r"item 1 \(id 7\): 'answer' 5 out of range"):
        load_pool(path, "text")
    path.write_text(json.dumps([GOOD, {**GOOD, "id": 7}]), encoding="utf-8")
    assert [i.id for i in load_pool(path, "text")] == ["a", 7]


def test_load_pool_reads_good_items(tmp_path: Path) -> None:
    path = tmp_path / "v.jsonl"
    path.write_text(
        json.dumps({**GOOD, "image": "a.png", "subject": "astro"}) + "\n", encoding="utf-8"
    )
    assert load_pool(path, "visual") == [
        MCItem(
            id="a",
            question=GOOD["question"],
            choices=("moon", "oven"),
            answer=0,
            image="a.png",
            subject="astro",
        )
    ]


def test_load_pool_rejects_empty_missing_and_bad_kind(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(PoolFormatError, match=r"empty.jsonl: 1 problem\(s\): no items"):
        load_pool(empty, "text")
    with pytest.raises(FileNotFoundError, match="text pool file not found"):
        load_pool(tmp_path / "nope.jsonl", "text")
    with pytest.raises(ValueError, match="pool kind must be one of"):
        load_pool(empty, "image")


# ------------------------------------------------------------------------------------------
# IIT files
# ------------------------------------------------------------------------------------------


@pytest.fixture()
def iit_file(pools, tmp_path: Path) -> Path:
    text, visual = pools
    return write_iit(
        build_iit(text, visual, settings=("T,V", "V"), per_setting=2, seed=0),
        tmp_path / "iit.jsonl",
    )


def _corrupt(path: Path, line: int, change) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    obj = json.loads(lines[line - 1])
    change(obj)
    lines[line - 1] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["turns"][0].update(kind="V"),
            "line 2 (id 'T,V-1'): turn 1: kind 'V' but the setting says 'T'",
        ),
        (lambda d: d["turns"].pop(), "line 2 (id 'T,V-1'): 1 turns but setting 'T,V' has 2"),
        (lambda d: d.update(setting="T,Q"), "line 2 (id 'T,V-1'): setting 'T,Q': turn 2 is 'Q'"),
        (
            lambda d: d.update(setting="t,v"),
            "line 2 (id 'T,V-1'): setting 't,v' is not canonical ('T,V')",
        ),
        (
            lambda d: d["turns"][1].update(answer=9),
            "line 2 (id 'T,V-1'): turn 2: 'answer' 9 out of range",
        ),
        (
            lambda d: d["turns"][1].update(image=None),
            "line 2 (id 'T,V-1'): turn 2: visual item without 'image'",
        ),
        (
            lambda d: d["turns"][0].pop("item_id"),
            "line 2 (id 'T,V-1'): turn 1: missing key 'item_id'",
        ),
        (lambda d: d.pop("turns"), "line 2 (id 'T,V-1'): missing key 'turns'"),
        (
            lambda d: d.update(id="T,V-0"),
            "line 2 (id 'T,V-0'): duplicate dialogue id (first seen at line 1)",
        ),
    ],
)
def test_bad_iit_lines_are_named(iit_file: Path, change, message: str) -> None:
    _corrupt(iit_file, 2, change)
    with pytest.raises(IITFormatError) as info:
        load_iit(iit_file)
    assert str(iit_file) in str(info.value)
    assert message in str(info.value)


def test_malformed_iit_line(iit_file: Path) -> None:
    with iit_file.open("a", encoding="utf-8") as f:
        f.write("{oops\n")
    with pytest.raises(IITFormatError, match="malformed JSON on line 5"):
        load_iit(iit_file)


def test_write_iit_refuses_invalid_dialogues(pools, tmp_path: Path) -> None:
    text, visual = pools
    dialogues = build_iit(text, visual, settings=("V",), per_setting=1)
    dialogues[0]["turns"][0]["kind"] = "T"
    with pytest.raises(IITFormatError, match="dialogue 0 \\(id 'V-0'\\): turn 1: kind 'T'"):
        write_iit(dialogues, tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


# ------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------

T_TURN = {
    "kind": "T",
    "item_id": 1,
    "question": "2+2?",
    "choices": ["3", "4", "5"],
    "answer": 1,
    "image": None,
    "subject": None,
}
V_TURN = {
    "kind": "V",
    "item_id": 2,
    "question": "What animal?",
    "choices": ["cat", "dog"],
    "answer": 0,
    "image": "cat.png",
    "subject": None,
}


def test_format_question() -> None:
    assert format_question(T_TURN) == "2+2?\nA. 3\nB. 4\nC. 5\nAnswer with the option's letter."
    assert (
        format_question(V_TURN)
        == "<image>\nWhat animal?\nA. cat\nB. dog\nAnswer with the option's letter."
    )
    assert (
        format_question(T_TURN, with_letters=False)
        == "2+2?\n- 3\n- 4\n- 5\nAnswer with the option's text."
    )
    item = MCItem(id=2, question="What animal?", choices=("cat", "dog"), answer=0, image="cat.png")
    assert format_question(item) == format_question(V_TURN)


def test_stray_image_marker_in_text_is_neutralised() -> None:
    turn = {**T_TURN, "question": "Is <image> a token?"}
    assert IMAGE_TOKEN not in format_question(turn)


def test_dialogue_messages() -> None:
    v2 = {**V_TURN, "item_id": 3, "image": "dog.png", "answer": 1}
    dialogue = {"id": "V,T,V-0", "setting": "V,T,V", "turns": [V_TURN, T_TURN, v2]}
    messages, images, scored = dialogue_messages(dialogue)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in messages if m["role"] == "assistant"] == ["A", "B"]
    assert messages[0]["content"] == format_question(V_TURN)
    assert messages[-1]["content"] == format_question(v2)
    assert images == ["cat.png", "dog.png"]
    assert sum(m["content"].count(IMAGE_TOKEN) for m in messages) == len(images)
    assert scored is v2
    messages, _, _ = dialogue_messages(dialogue, with_letters=False)
    assert [m["content"] for m in messages if m["role"] == "assistant"] == ["cat", "4"]


def test_dialogue_messages_single_turn() -> None:
    messages, images, scored = dialogue_messages({"id": "T-0", "setting": "T", "turns": [T_TURN]})
    assert messages == [{"role": "user", "content": format_question(T_TURN)}]
    assert images == [] and scored is T_TURN


# ------------------------------------------------------------------------------------------
# Answer parsing
# ------------------------------------------------------------------------------------------

CHOICES = ["Paris", "London", "Berlin", "Madrid"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", 1),
        ("B.", 1),
        ("(b)", 1),
        ("  **C**  ", 2),
        ("[D]", 3),
        ("a", 0),
        ("B. London", 1),
        ("(C) Berlin", 2),
        ("D) Madrid", 3),
        ("The answer is B", 1),
        ("The answer is B.", 1),
        ("I think the correct answer is (c).", 2),
        ("Answer: D", 3),
        ("answer: (a)", 0),
        ("Option A looks tempting, but the answer is C", 2),
        ("I would pick option B", 1),
        ("London", 1),
        ("It is Madrid.", 3),
        ("the capital is paris", 0),
        ("I think C", 2),
        ("E", None),
        ("The answer is E", None),
        ("", None),
        ("I do not know", None),
        ("Paris or London", None),
        ("A or B", None),
    ],
)
def test_parse_choice(text: str, expected: int | None) -> None:
    assert parse_choice(text, 4, CHOICES) == expected


def test_parse_choice_without_choices_and_longest_choice() -> None:
    assert parse_choice("London", 4) is None
    assert parse_choice("dark red", 2, ["red", "dark red"]) == 1
    assert parse_choice("The answer is Bob", 4) is None
    with pytest.raises(ValueError, match="n_choices"):
        parse_choice("A", 0)


def test_is_correct() -> None:
    assert is_correct(T_TURN, "B. 4")
    assert not is_correct(T_TURN, "A")
    assert not is_correct(T_TURN, "no idea")


# ------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------


def test_wilson_interval_known_values() -> None:
    r = accuracy_with_ci([True] * 8 + [False] * 2)
    assert r["n"] == 10 and r["acc"] == pytest.approx(0.8)
    assert (r["low"], r["high"]) == (
        pytest.approx(0.4902, abs=1e-4),
        pytest.approx(0.9433, abs=1e-4),
    )
    # Closed forms at the edges: k = 0 -> [0, z^2 / (n + z^2)], k = n -> [n / (n + z^2), 1].
    z2 = 1.959963984540054**2
    zero = accuracy_with_ci([False] * 10)
    assert zero["low"] == pytest.approx(0.0, abs=1e-12) and zero["high"] == pytest.approx(
        z2 / (10 + z2)
    )
    full = accuracy_with_ci([True] * 10)
    assert full["high"] == pytest.approx(1.0) and full["low"] == pytest.approx(10 / (10 + z2))
    # 50/100 at 99%: centre 0.5, half-width z * sqrt(0.25/n + z^2/4n^2) / (1 + z^2/n).
    z = 2.5758293035489
    half = z * (0.25 / 100 + z * z / 40000) ** 0.5 / (1 + z * z / 100)
    r99 = accuracy_with_ci([True, False] * 50, confidence=0.99)
    assert (r99["low"], r99["high"]) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))


def test_wilson_interval_edge_cases() -> None:
    empty = accuracy_with_ci([])
    assert (
        empty["n"] == 0
        and empty["acc"] != empty["acc"]
        and (empty["low"], empty["high"]) == (0.0, 1.0)
    )
    with pytest.raises(ValueError, match="confidence"):
        accuracy_with_ci([True], confidence=1.0)
    with pytest.raises(ValueError, match="booleans"):
        accuracy_with_ci([True, 0.5])


def test_summarize_iit() -> None:
    results = [("T", True), ("T,V", False), ("t", False), ("T,V", True), ("T", True)]
    summary = summarize_iit(results)
    assert list(summary) == ["T", "T,V"]
    assert summary["T"]["n"] == 3 and summary["T"]["acc"] == pytest.approx(2 / 3)
    assert summary["T,V"] == accuracy_with_ci([False, True])


def test_chinese_questions_are_grouped_by_topic() -> None:
    # CMMLU has no spaces between words; each ideograph must count as a token.
    rng = random.Random(0)
    topics = {"astro": "行星轨道望远镜银河彗星星云", "cook": "面粉黄油烤箱大蒜面团食谱"}
    items = [
        MCItem(f"t-{topic}-{i}", "".join(rng.sample(chars, 5)) + "的说法正确的是", ("甲", "乙"), 0)
        for topic, chars in topics.items()
        for i in range(15)
    ]
    rng.shuffle(items)
    dialogues = build_iit(items, None, settings=("T,T,T",), per_setting=20, seed=0)
    pairs = [(topic_of(t), topic_of(d["turns"][-1])) for d in dialogues for t in d["turns"][:-1]]
    assert sum(a == b for a, b in pairs) / len(pairs) > 0.9  # chance is 1/2
