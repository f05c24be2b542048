"""Tests for the benchmark pool loaders, on tiny fixtures in each set's upstream column format."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

datasets = pytest.importorskip("datasets")
from PIL import Image  # noqa: E402

from wings.evaluation.converters import (  # noqa: E402
    POOL_FORMATS,
    POOL_LOADER_KINDS,
    POOL_LOADERS,
    convert_pool,
    load_ai2d,
    load_cmmlu,
    load_hellaswag,
    load_mmbench,
    load_mmlu,
    load_openbookqa,
    load_scienceqa,
    load_seedbench,
)
from wings.evaluation.pools import MCItem, PoolFormatError, load_pool, write_pool  # noqa: E402


def png(color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (4, 3), color)


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    png(color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_parquet(path: Path, rows: dict, features: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    feats = datasets.Features(features) if features else None
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(path))
    return path


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    # Keep datasets' Arrow cache out of the user's ~/.cache.
    return tmp_path / "hf-cache"


def assert_same_pixels(path: str, color: tuple[int, int, int]) -> None:
    with Image.open(path) as image:
        assert image.size == (4, 3) and image.convert("RGB").getpixel((0, 0)) == color


def roundtrip(items: list[MCItem], kind: str, tmp_path: Path) -> None:
    """Loader output is a valid pool of its kind and survives write_pool/load_pool unchanged."""
    assert load_pool(write_pool(items, tmp_path / f"roundtrip-{kind}.jsonl"), kind) == items


# ------------------------------------------------------------------------------------------
# Text sets
# ------------------------------------------------------------------------------------------

MMLU_FEATURES = {
    "question": datasets.Value("string"),
    "subject": datasets.Value("string"),
    "choices": datasets.Sequence(datasets.Value("string")),
    "answer": datasets.ClassLabel(names=["A", "B", "C", "D"]),
}
MMLU_ROWS = {
    "question": ["What is the closest star to Earth?", "Which gas do plants absorb?"],
    "subject": ["astronomy", "high_school_biology"],
    "choices": [
        ["Sirius", "The Sun", "Vega", "Polaris"],
        ["Oxygen", "Nitrogen", "Carbon dioxide", "Helium"],
    ],
    "answer": [1, 2],
}


def test_load_mmlu_file(tmp_path: Path, cache: Path) -> None:
    path = write_parquet(tmp_path / "mmlu.parquet", MMLU_ROWS, MMLU_FEATURES)
    items = load_mmlu(path, split="test", cache_dir=cache)
    assert items == [
        MCItem(
            "mmlu/test/0",
            "What is the closest star to Earth?",
            ("Sirius", "The Sun", "Vega", "Polaris"),
            1,
            None,
            "astronomy",
        ),
        MCItem(
            "mmlu/test/1",
            "Which gas do plants absorb?",
            ("Oxygen", "Nitrogen", "Carbon dioxide", "Helium"),
            2,
            None,
            "high_school_biology",
        ),
    ]
    roundtrip(items, "text", tmp_path)


def test_load_mmlu_directory_picks_the_split(tmp_path: Path, cache: Path) -> None:
    folder = tmp_path / "mmlu" / "all"
    write_parquet(folder / "test-00000-of-00001.parquet", MMLU_ROWS, MMLU_FEATURES)
    dev = {k: v[:1] for k, v in MMLU_ROWS.items()}
    write_parquet(folder / "dev-00000-of-00001.parquet", dev, MMLU_FEATURES)
    val = {k: v * 3 for k, v in MMLU_ROWS.items()}
    write_parquet(folder / "validation-00000-of-00001.parquet", val, MMLU_FEATURES)
    # "dev" (few-shot examples) and "validation" stay apart, unlike datasets' split inference.
    assert len(load_mmlu(folder, split="test", cache_dir=cache)) == 2
    assert len(load_mmlu(folder, split="dev", cache_dir=cache)) == 1
    assert len(load_mmlu(folder, split="validation", cache_dir=cache)) == 6
    with pytest.raises(
        ValueError, match=r"no split 'train'; available splits: \['dev', 'test', 'validation'\]"
    ):
        load_mmlu(folder, split="train", cache_dir=cache)


def test_folder_without_split_names_is_loaded_whole(tmp_path: Path, cache: Path, caplog) -> None:
    write_parquet(tmp_path / "mine" / "questions.parquet", MMLU_ROWS, MMLU_FEATURES)
    items = load_mmlu(tmp_path / "mine", split="test", cache_dir=cache)
    assert len(items) == 2
    assert "file names name no split; using all 1 data files as 'test'" in caplog.text


def test_missing_columns_are_named(tmp_path: Path, cache: Path) -> None:
    rows = {k: v for k, v in MMLU_ROWS.items() if k != "subject"}
    path = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(
        ValueError,
        match=r"bad.parquet \[test\]: not in MMLU format: missing column\(s\) \['subject'\]",
    ):
        load_mmlu(path, cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="dataset path not found"):
        load_mmlu(tmp_path / "nope.parquet", cache_dir=cache)
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        (tmp_path / "x.txt").write_text("hi")
        load_mmlu(tmp_path / "x.txt", cache_dir=cache)


def test_load_cmmlu_subject_csvs(tmp_path: Path, cache: Path) -> None:
    # Upstream CSVs start with an unnamed index column.
    test_dir = tmp_path / "cmmlu" / "test"
    test_dir.mkdir(parents=True)
    (test_dir / "agronomy.csv").write_text(
        ",Question,A,B,C,D,Answer\n0,最主要的基本生产资料是____,农业生产工具,土地,劳动力,资金,B\n",
        encoding="utf-8",
    )
    (test_dir / "astronomy.csv").write_text(
        ",Question,A,B,C,D,Answer\n0,太阳系中最大的行星是,地球,火星,木星,金星,C\n1,月球绕什么转,太阳,地球,火星,木星,B\n",
        encoding="utf-8",
    )
    items = load_cmmlu(tmp_path / "cmmlu", split="test", cache_dir=cache)
    assert [(i.id, i.subject, i.answer) for i in items] == [
        ("cmmlu/test/agronomy/0", "agronomy", 1),
        ("cmmlu/test/astronomy/0", "astronomy", 2),
        ("cmmlu/test/astronomy/1", "astronomy", 1),
    ]
    assert items[0].choices == ("农业生产工具", "土地", "劳动力", "资金")
    assert (
        load_cmmlu(test_dir / "agronomy.csv", cache_dir=cache)[0].question
        == "最主要的基本生产资料是____"
    )
    roundtrip(items, "text", tmp_path)


def test_load_cmmlu_missing_column(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "law.csv"
    path.write_text(",Question,A,B,C,D\n0,q,a,b,c,d\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"not in CMMLU format: missing column\(s\) \['Answer'\]"):
        load_cmmlu(path, cache_dir=cache)


def test_load_openbookqa(tmp_path: Path, cache: Path) -> None:
    rows = {
        "id": ["7-980", "7-584"],
        "question_stem": ["The sun is responsible for", "When food is reduced in the stomach"],
        "choices": [
            {
                "text": [
                    "puppies learning new tricks",
                    "plants sprouting",
                    "children growing up",
                    "flowers wilting",
                ],
                "label": ["A", "B", "C", "D"],
            },
            {
                "text": [
                    "the mind needs time",
                    "nutrients are digested",
                    "it becomes bigger",
                    "it gets cold",
                ],
                "label": ["A", "B", "C", "D"],
            },
        ],
        "answerKey": ["B", "B"],
    }
    path = write_parquet(tmp_path / "openbookqa" / "main" / "test-00000-of-00001.parquet", rows)
    items = load_openbookqa(path.parent, cache_dir=cache)
    assert [(i.id, i.answer, i.choices[i.answer]) for i in items] == [
        ("7-980", 1, "plants sprouting"),
        ("7-584", 1, "nutrients are digested"),
    ]
    roundtrip(items, "text", tmp_path)


def test_load_openbookqa_bad_answer_key(tmp_path: Path, cache: Path) -> None:
    rows = {
        "id": ["x"],
        "question_stem": ["q"],
        "choices": [{"text": ["a", "b"], "label": ["A", "B"]}],
        "answerKey": ["E"],
    }
    path = write_parquet(tmp_path / "obqa.parquet", rows)
    with pytest.raises(
        ValueError, match=r"row 0 \(id 'x'\): answerKey 'E' not among labels \['A', 'B'\]"
    ):
        load_openbookqa(path, cache_dir=cache)


def test_load_hellaswag(tmp_path: Path, cache: Path) -> None:
    base = {"ctx_a": "", "ctx_b": "", "source_id": "s", "split": "val", "split_type": "indomain"}
    rows = [
        {
            **base,
            "ind": 24,
            "activity_label": "Roof shingle removal",
            "ctx": "A man is sitting on a roof. he",
            "endings": [
                "is using wrap.",
                "is ripping level tiles off.",
                "is holding a rubik's cube.",
                "starts pulling up roofing.",
            ],
            "label": "3",
        },
        {
            **base,
            "ind": 92,
            "activity_label": "Clean and jerk",
            "ctx": "[header] How to lift [title] Grip the bar. [step] A lady walks to a barbell. She",
            "endings": ["lifts it.", "drops it.", "eats it.", "sings."],
            "label": "0",
        },
        {
            **base,
            "ind": 5,
            "activity_label": "Test",
            "ctx": "unlabelled",
            "endings": ["a", "b", "c", "d"],
            "label": "",
        },
    ]
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    items = load_hellaswag(path, cache_dir=cache)
    assert [(i.id, i.answer, i.subject) for i in items] == [
        ("hellaswag/validation/24", 3, "Roof shingle removal"),
        ("hellaswag/validation/92", 0, "Clean and jerk"),
    ]
    assert items[0].question.endswith("\nA man is sitting on a roof. he")
    assert "[" not in items[1].question and "Grip the bar." in items[1].question
    roundtrip(items, "text", tmp_path)


# ------------------------------------------------------------------------------------------
# Visual sets
# ------------------------------------------------------------------------------------------

SCIENCEQA_FEATURES = {
    "image": datasets.Image(),
    "question": datasets.Value("string"),
    "choices": datasets.Sequence(datasets.Value("string")),
    "answer": datasets.Value("int8"),
    "hint": datasets.Value("string"),
    "task": datasets.Value("string"),
    "grade": datasets.Value("string"),
    "subject": datasets.Value("string"),
    "topic": datasets.Value("string"),
    "category": datasets.Value("string"),
    "skill": datasets.Value("string"),
    "lecture": datasets.Value("string"),
    "solution": datasets.Value("string"),
}


@pytest.fixture()
def scienceqa_file(tmp_path: Path) -> Path:
    rows = {
        "image": [png((255, 0, 0)), None],
        "question": [
            "Which state is highlighted?",
            "Which word would you find on a dictionary page?",
        ],
        "choices": [["Ohio", "Texas", "Utah"], ["bake", "ruin"]],
        "answer": [2, 0],
        "hint": ["", "Pick the word between guide words."],
        "task": ["closed choice", "closed choice"],
        "grade": ["grade2", "grade3"],
        "subject": ["social science", "language science"],
        "topic": ["geography", "reference-skills"],
        "category": ["States", "Use guide words"],
        "skill": ["Identify states", "Use guide words"],
        "lecture": ["", ""],
        "solution": ["", ""],
    }
    return write_parquet(
        tmp_path / "scienceqa" / "test-00000-of-00001.parquet", rows, SCIENCEQA_FEATURES
    )


def test_load_scienceqa_visual_and_text(scienceqa_file: Path, tmp_path: Path, cache: Path) -> None:
    images = tmp_path / "images"
    visual = load_scienceqa(scienceqa_file, image_dir=images, cache_dir=cache)
    assert len(visual) == 1
    item = visual[0]
    assert (item.id, item.answer, item.subject, item.choices) == (
        "scienceqa/test/0",
        2,
        "geography",
        ("Ohio", "Texas", "Utah"),
    )
    assert item.question == "Which state is highlighted?"
    assert Path(item.image).parent == images
    assert_same_pixels(item.image, (255, 0, 0))
    roundtrip(visual, "visual", tmp_path)

    text = load_scienceqa(scienceqa_file, kind="text", cache_dir=cache)
    assert [(i.id, i.image) for i in text] == [("scienceqa/test/1", None)]
    assert (
        text[0].question
        == "Context: Pick the word between guide words.\nWhich word would you find on a dictionary page?"
    )
    roundtrip(text, "text", tmp_path)
    assert len(load_scienceqa(scienceqa_file, kind=None, image_dir=images, cache_dir=cache)) == 2


def test_load_scienceqa_needs_image_dir(scienceqa_file: Path, cache: Path) -> None:
    with pytest.raises(
        ValueError, match=r"row 0: scienceqa rows carry embedded images; pass image_dir="
    ):
        load_scienceqa(scienceqa_file, cache_dir=cache)


def test_load_mmbench_tsv_with_base64_images(tmp_path: Path, cache: Path) -> None:
    header = [
        "index",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "image",
        "source",
        "l2-category",
        "comment",
        "split",
    ]
    red = base64.b64encode(png_bytes((255, 0, 0))).decode()
    jpeg = io.BytesIO()
    png((0, 0, 255)).save(jpeg, format="JPEG")
    blue = base64.b64encode(jpeg.getvalue()).decode()
    assert blue.startswith("/9j/")  # JPEG base64 starts with a slash, like a path
    rows = [
        [
            "241",
            "What is the main color?",
            "",
            "red",
            "green",
            "blue",
            "black",
            "A",
            "color_attribute",
            red,
            "s",
            "attribute",
            "",
            "dev",
        ],
        [
            "1067",
            "Is the sky in this image clear?",
            "Look at the top.",
            "yes",
            "no",
            "",
            "",
            "B",
            "image_scene",
            blue,
            "s",
            "scene",
            "",
            "dev",
        ],
        [
            "5",
            "Unanswered?",
            "",
            "x",
            "y",
            "",
            "",
            "",
            "image_scene",
            blue,
            "s",
            "scene",
            "",
            "test",
        ],
    ]
    path = tmp_path / "MMBench_DEV_EN.tsv"
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    items = load_mmbench(path, image_dir=tmp_path / "img", cache_dir=cache)
    assert [(i.id, i.choices, i.answer, i.subject) for i in items] == [
        (241, ("red", "green", "blue", "black"), 0, "color_attribute"),
        (1067, ("yes", "no"), 1, "image_scene"),
    ]
    assert items[1].question == "Context: Look at the top.\nIs the sky in this image clear?"
    assert_same_pixels(items[0].image, (255, 0, 0))
    with Image.open(items[1].image) as image:  # JPEG is lossy: compare roughly
        red, green, blue_ = image.convert("RGB").getpixel((0, 0))
        assert image.size == (4, 3) and blue_ > 200 and red < 50 and green < 50
    roundtrip(items, "visual", tmp_path)


def test_load_mmbench_image_paths_and_missing_image(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "imgs").mkdir()
    png((0, 255, 0)).save(tmp_path / "imgs" / "1.png")
    rows = {
        "index": [1, 2],
        "question": ["q1", "q2"],
        "hint": [None, None],
        "A": ["a", "a"],
        "B": ["b", "b"],
        "C": [None, None],
        "D": [None, None],
        "answer": ["A", "B"],
        "category": ["c", "c"],
        "image": ["1.png", "2.png"],
    }
    path = write_parquet(tmp_path / "mmbench.parquet", rows)
    with pytest.raises(
        ValueError,
        match=r"row 1 \(index 2\): image '2.png' not found under image_root '.*imgs' \(nor",
    ):
        load_mmbench(path, image_root=tmp_path / "imgs", cache_dir=cache)
    png((0, 255, 0)).save(tmp_path / "imgs" / "2.png")
    items = load_mmbench(path, image_root=tmp_path / "imgs", cache_dir=cache)
    assert [i.image for i in items] == [
        str(tmp_path / "imgs" / "1.png"),
        str(tmp_path / "imgs" / "2.png"),
    ]


def test_load_seedbench_upstream_json(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "SEED-Bench-image"
    root.mkdir()
    png((1, 2, 3)).save(root / "1454426_2591111986.jpg", format="PNG")
    png((4, 5, 6)).save(root / "2250138_3201347806.jpg", format="PNG")
    base = {"choice_c": "three", "choice_d": "four"}
    data = {
        "questions": [
            {
                **base,
                "answer": "A",
                "choice_a": "one",
                "choice_b": "two",
                "data_id": "1454426_2591111986.jpg",
                "data_type": "image",
                "question": "How many towels are in the image?",
                "question_id": "101669",
                "question_type_id": 5,
            },
            {
                **base,
                "answer": "D",
                "choice_a": "one",
                "choice_b": "two",
                "data_id": "v1234.mp4",
                "data_type": "video",
                "question": "What happens next?",
                "question_id": "200001",
                "question_type_id": 11,
            },
            {
                **base,
                "answer": "C",
                "choice_a": "left",
                "choice_b": "right",
                "data_id": "2250138_3201347806.jpg",
                "data_type": "image",
                "question": "Where is the dog?",
                "question_id": "7",
                "question_type_id": 4,
            },
        ],
        "question_type": {"Instances Counting": 5, "Instance Location": 4, "Action Prediction": 11},
    }
    path = tmp_path / "SEED-Bench.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    items = load_seedbench(path, image_root=root, cache_dir=cache)
    assert [(i.id, i.answer, i.subject, i.image) for i in items] == [
        ("101669", 0, "Instances Counting", str(root / "1454426_2591111986.jpg")),
        ("7", 2, "Instance Location", str(root / "2250138_3201347806.jpg")),
    ]
    assert items[1].choices == ("left", "right", "three", "four")
    roundtrip(items, "visual", tmp_path)


def test_load_seedbench_lmms_parquet(tmp_path: Path, cache: Path) -> None:
    rows = {
        "answer": ["B"],
        "choice_a": ["cat"],
        "choice_b": ["dog"],
        "choice_c": ["cow"],
        "choice_d": ["hen"],
        "data_id": ["x.jpg"],
        "data_type": ["image"],
        "question": ["Which animal?"],
        "question_id": ["42"],
        "question_type_id": [2],
        "image": [[png((9, 9, 9))]],
    }
    features = {k: datasets.Value("string") for k in rows if k not in ("question_type_id", "image")}
    features |= {
        "question_type_id": datasets.Value("int16"),
        "image": datasets.Sequence(datasets.Image()),
    }
    path = write_parquet(tmp_path / "seed" / "test-00000-of-00001.parquet", rows, features)
    items = load_seedbench(path.parent, image_dir=tmp_path / "img", cache_dir=cache)
    assert [(i.id, i.answer, i.subject) for i in items] == [("42", 1, "question_type_2")]
    assert_same_pixels(items[0].image, (9, 9, 9))


def test_load_ai2d(tmp_path: Path, cache: Path) -> None:
    rows = {
        "question": ["Which stage comes after the egg?", "What does label A show?"],
        "options": [["larva", "adult", "pupa", "nymph"], ["root", "leaf"]],
        "answer": ["0", "1"],
        "image": [png((10, 20, 30)), png((40, 50, 60))],
    }
    features = {
        "question": datasets.Value("string"),
        "options": datasets.Sequence(datasets.Value("string")),
        "answer": datasets.Value("string"),
        "image": datasets.Image(),
    }
    write_parquet(tmp_path / "ai2d" / "data" / "test-00000-of-00001.parquet", rows, features)
    items = load_ai2d(tmp_path / "ai2d", image_dir=tmp_path / "img", cache_dir=cache)
    assert [(i.id, i.answer, len(i.choices)) for i in items] == [
        ("ai2d/test/0", 0, 4),
        ("ai2d/test/1", 1, 2),
    ]
    assert_same_pixels(items[1].image, (40, 50, 60))
    roundtrip(items, "visual", tmp_path)


def test_load_ai2d_answer_out_of_range(tmp_path: Path, cache: Path) -> None:
    rows = {"question": ["q"], "options": [["a", "b"]], "answer": ["5"], "image": [png((0, 0, 0))]}
    path = write_parquet(
        tmp_path / "ai2d.parquet",
        rows,
        {
            "question": datasets.Value("string"),
            "options": datasets.Sequence(datasets.Value("string")),
            "answer": datasets.Value("string"),
            "image": datasets.Image(),
        },
    )
    with pytest.raises(
        ValueError, match=r"ai2d.parquet \[test\]: row 0: answer '5' out of range for 2 choices"
    ):
        load_ai2d(path, image_dir=tmp_path / "img", cache_dir=cache)


def test_registry() -> None:
    names = {
        "mmlu",
        "cmmlu",
        "openbookqa",
        "hellaswag",
        "scienceqa",
        "mmbench",
        "seedbench",
        "ai2d",
    }
    assert set(POOL_LOADERS) == names == set(POOL_LOADER_KINDS)
    assert POOL_LOADERS["mmlu"] is load_mmlu and POOL_LOADERS["ai2d"] is load_ai2d


def test_converted_items_are_validated(tmp_path: Path, cache: Path) -> None:
    rows = {k: [v[0]] for k, v in MMLU_ROWS.items()}
    rows["choices"] = [["only one"]]
    rows["answer"] = [0]
    path = write_parquet(tmp_path / "one.parquet", rows, MMLU_FEATURES)
    with pytest.raises(
        PoolFormatError, match=r"item 0 \(id 'mmlu/test/0'\): 'choices' has 1 entry"
    ):
        load_mmlu(path, cache_dir=cache)


# --------------------------------------------------------------------------------------------
# convert_pool: the entry point behind `wings pool convert`
# --------------------------------------------------------------------------------------------


def test_convert_text_sets_writes_what_the_loader_reads(tmp_path: Path, cache: Path) -> None:
    mmlu = write_parquet(tmp_path / "mmlu.parquet", MMLU_ROWS, MMLU_FEATURES)
    out = convert_pool("mmlu", mmlu, tmp_path / "pools" / "mmlu.jsonl", cache_dir=cache)
    assert out == tmp_path / "pools" / "mmlu.jsonl"
    assert load_pool(out, "text") == load_mmlu(mmlu, cache_dir=cache)
    first = convert_pool("mmlu", mmlu, tmp_path / "one.jsonl", limit=1, cache_dir=cache)
    assert [i.id for i in load_pool(first, "text")] == ["mmlu/test/0"]
    folder = tmp_path / "cmmlu" / "test"
    folder.mkdir(parents=True)
    (folder / "astronomy.csv").write_text(",Question,A,B,C,D,Answer\n0,最大的行星是,地球,火星,木星,金星,C\n",
                                          encoding="utf-8")  # fmt: skip
    items = load_pool(convert_pool("cmmlu", tmp_path / "cmmlu", tmp_path / "cmmlu.jsonl", cache_dir=cache), "text")
    assert [(i.id, i.question, i.answer) for i in items] == [("cmmlu/test/astronomy/0", "最大的行星是", 2)]


def test_convert_visual_set_writes_images_beside_the_pool(tmp_path: Path, cache: Path, monkeypatch) -> None:
    rows = {
        "question": ["Which stage comes after the egg?", "What does label A show?"],
        "options": [["larva", "adult", "pupa", "nymph"], ["root", "leaf"]],
        "answer": ["0", "1"],
        "image": [png((10, 20, 30)), png((40, 50, 60))],
    }
    features = {"question": datasets.Value("string"), "options": datasets.Sequence(datasets.Value("string")),
                "answer": datasets.Value("string"), "image": datasets.Image()}  # fmt: skip
    source = write_parquet(tmp_path / "ai2d" / "test-00000-of-00001.parquet", rows, features)
    monkeypatch.chdir(tmp_path)  # a relative output: image paths must still work from anywhere
    out = convert_pool("ai2d", source, Path("pools") / "ai2d.jsonl", cache_dir=cache)
    items = load_pool(tmp_path / out, "visual")
    assert [(i.id, i.answer) for i in items] == [("ai2d/test/0", 0), ("ai2d/test/1", 1)]
    assert all(Path(i.image).is_absolute() and Path(i.image).parent == tmp_path / "pools" / "ai2d_images"
               for i in items)  # fmt: skip
    assert_same_pixels(items[1].image, (40, 50, 60))


def test_convert_scienceqa_text_or_visual_rows(scienceqa_file: Path, tmp_path: Path, cache: Path) -> None:
    visual = load_pool(convert_pool("scienceqa", scienceqa_file, tmp_path / "v.jsonl", cache_dir=cache), "visual")
    text = load_pool(convert_pool("scienceqa", scienceqa_file, tmp_path / "t.jsonl", kind="text", cache_dir=cache),
                     "text")  # fmt: skip
    assert [i.question for i in visual] == ["Which state is highlighted?"]
    assert [i.choices for i in text] == [("bake", "ruin")]


def test_convert_pool_refuses_what_a_format_does_not_take(tmp_path: Path) -> None:
    assert set(POOL_FORMATS) == set(POOL_LOADERS)
    with pytest.raises(ValueError, match="unknown pool format 'mmlu2'; choose one of mmlu, cmmlu"):
        convert_pool("mmlu2", tmp_path, tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="kind= only applies to scienceqa"):
        convert_pool("mmbench", tmp_path, tmp_path / "x.jsonl", kind="text")
    with pytest.raises(ValueError, match="mmlu is a text benchmark: image_dir and image_root do not apply"):
        convert_pool("mmlu", tmp_path, tmp_path / "x.jsonl", image_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset path not found"):
        convert_pool("mmlu", tmp_path / "missing.parquet", tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


def test_wings_pool_convert_command_writes_the_pool(tmp_path: Path, cache: Path, capsys) -> None:
    from wings.cli import main

    mmlu = write_parquet(tmp_path / "mmlu.parquet", MMLU_ROWS, MMLU_FEATURES)
    out = tmp_path / "mmlu.jsonl"
    assert main(["pool", "convert", "mmlu", str(mmlu), "--output", str(out), "--limit", "1",
                 "--cache-dir", str(cache)]) == 0  # fmt: skip
    assert [i.id for i in load_pool(out, "text")] == ["mmlu/test/0"]
    assert main(["pool", "convert", "nosuch", str(mmlu), "--output", str(out)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: unknown pool format 'nosuch'")
