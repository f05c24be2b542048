"""Forgetting report: markdown table, metrics JSON, retention-vs-VQA scatter."""

from __future__ import annotations

import json
import math

import pytest

from wings.evaluation.report import (
    ModelEvaluation,
    forgetting_report,
    plot_retention_vs_vqa,
    retention,
    unique_names,
    write_metrics_json,
)

PNG = b"\x89PNG\r\n\x1a\n"


def entries() -> list[ModelEvaluation]:
    return [
        ModelEvaluation(name="Qwen base", text_acc=0.60, per_skill={"mmlu": 0.55, "hellaswag": 0.65}),
        ModelEvaluation(
            name="LLaVA-style",
            text_acc=0.45,
            per_skill={"mmlu": 0.40, "hellaswag": 0.50},
            vqa_acc=0.70,
            iit={"T": {"acc": 0.40, "low": 0.3, "high": 0.5, "n": 100},
                 "T,V": {"acc": 0.55, "low": 0.45, "high": 0.65, "n": 100}},
            attention_shift=0.31,
        ),
        ModelEvaluation(
            name="WINGS",
            text_acc=0.57,
            per_skill={"mmlu": 0.52, "cmmlu": 0.33},
            vqa_acc=0.72,
            iit={"T": {"acc": 0.58, "low": 0.48, "high": 0.67, "n": 100},
                 "V": {"acc": 0.61, "low": 0.51, "high": 0.70, "n": 100}},
            attention_shift=0.08,
        ),
    ]


def _rows(markdown: str) -> dict[str, list[str]]:
    """First-column name -> cells of each table row."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells)
    return rows


def test_report_has_every_model_retention_and_every_setting():
    report = forgetting_report(entries(), base_text_acc=0.60)
    rows = _rows(report)
    header = rows["model"]
    assert header[:4] == ["model", "text-only acc", "retention", "multimodal acc"]
    assert header[4:7] == ["IIT (T)", "IIT (T,V)", "IIT (V)"] and header[-1] == "attention shift"
    assert rows["Qwen base"][1:4] == ["0.600", "1.000", "-"]
    assert rows["LLaVA-style"][1:4] == ["0.450", "0.750", "0.700"]
    assert rows["LLaVA-style"][4:] == ["0.400", "0.550", "-", "0.310"]
    assert rows["WINGS"][2] == f"{0.57 / 0.60:.3f}" == "0.950"
    assert rows["WINGS"][4:] == ["0.580", "-", "0.610", "0.080"]
    assert "base LLM text-only accuracy: 0.600" in report
    # Per-skill table: union of skills, '-' where a model was not measured.
    lines = report.splitlines()
    skill_header = next(line for line in lines if line.startswith("| model | mmlu"))
    assert skill_header == "| model | mmlu | hellaswag | cmmlu |"
    assert "| WINGS | 0.520 | - | 0.330 |" in lines


def test_report_without_base_and_bad_input():
    report = forgetting_report(entries()[1:], base_text_acc=None)
    assert "retention is not computed" in report
    assert _rows(report)["WINGS"][2] == "-"
    with pytest.raises(ValueError, match="names repeat.*WINGS"):
        forgetting_report([ModelEvaluation("WINGS"), ModelEvaluation("WINGS")], 0.5)
    with pytest.raises(ValueError, match="no models"):
        forgetting_report([], 0.5)


def test_retention():
    assert retention(0.45, 0.6) == pytest.approx(0.75)
    assert retention(None, 0.6) is None and retention(0.5, None) is None
    assert retention(0.5, 0.0) is None and retention(float("nan"), 0.6) is None


def test_write_metrics_json(tmp_path):
    models = entries()
    models[0].iit = {"V": {"acc": math.nan, "low": 0.0, "high": 1.0, "n": 0}}
    path = write_metrics_json(models, tmp_path / "out" / "metrics.json", base_text_acc=0.6, extra={"seed": 3})
    data = json.loads(path.read_text())
    assert data["base_text_acc"] == 0.6 and data["seed"] == 3
    assert [m["name"] for m in data["models"]] == ["Qwen base", "LLaVA-style", "WINGS"]
    assert data["models"][1]["retention"] == pytest.approx(0.75)
    assert data["models"][0]["iit"]["V"]["acc"] is None  # NaN is not JSON
    assert data["models"][2]["per_skill"] == {"mmlu": 0.52, "cmmlu": 0.33}
    with pytest.raises(ValueError, match="overwrite"):
        write_metrics_json(models, tmp_path / "m.json", extra={"models": []})


def test_plot_retention_vs_vqa(tmp_path, caplog):
    path = plot_retention_vs_vqa(entries(), tmp_path / "plots" / "retention.png", base_text_acc=0.6)
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 2000
    # Without a base the y axis is the text accuracy itself; still a figure.
    assert plot_retention_vs_vqa(entries(), tmp_path / "acc.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="no model has both"):
        plot_retention_vs_vqa(entries()[:1], tmp_path / "none.png", base_text_acc=0.6)


def test_plot_labels_every_model(tmp_path, monkeypatch):
    """Every plotted model is a labelled point (the base, without VQA accuracy, is left out)."""
    from wings.evaluation import report

    seen = {}

    def spy(ax, xs, ys, labels):
        seen.update(zip(labels, zip(xs, ys, strict=True), strict=True))
        return original(ax, xs, ys, labels)

    original = report.labelled_scatter
    monkeypatch.setattr(report, "labelled_scatter", spy)
    plot_retention_vs_vqa(entries(), tmp_path / "r.png", base_text_acc=0.6)
    assert seen == {"LLaVA-style": (0.70, pytest.approx(0.75)), "WINGS": (0.72, pytest.approx(0.95))}


def test_pareto_front():
    from wings.evaluation.report import pareto_front

    points = [(0.857, 0.418), (0.854, 0.997), (0.866, 0.914), (0.80, 0.5)]
    assert pareto_front(points) == [(0.854, 0.997), (0.866, 0.914)]


def test_unique_names_never_repeat():
    """Regression: `wings eval` named `a/x, b/x-2, c/x` as x, x-2, x-2, so the third model's plots
    and LAWS folder overwrote the second's."""
    assert unique_names(["a/x", "b/x-2", "c/x"]) == ["x", "x-2", "x-3"]
    assert unique_names(["a/x", "b/x", "c/x"]) == ["x", "x-2", "x-3"]
    assert unique_names(["m/", "n/m"]) == ["m", "m-2"]


def test_evaluate_models_writes_one_folder_per_model(tmp_path):
    """The names reach the files: three models whose folders collide get three LAWS folders."""
    from eval_fixtures import color_image, save_wings_dir

    from wings.evaluation.forgetting import EvalData, evaluate_models

    dirs = [save_wings_dir(tmp_path / "a" / "x"), save_wings_dir(tmp_path / "b" / "x-2", seed=1),
            save_wings_dir(tmp_path / "c" / "x", seed=2)]  # fmt: skip
    color_image("red").save(tmp_path / "red.png")
    sample = {"id": "s", "image": "red.png", "conversations": [
        {"from": "human", "value": "hello <image>\nWhat colour is the shape?"}, {"from": "gpt", "value": "red"}]}
    (tmp_path / "laws.json").write_text(json.dumps([sample]))
    entries, _, _ = evaluate_models([str(d) for d in dirs], EvalData(laws=str(tmp_path / "laws.json"),
                                    image_folder=str(tmp_path)), tmp_path / "out", device="cpu")  # fmt: skip
    assert [e.name for e in entries] == ["x", "x-2", "x-3"]
    curves = {tuple(json.loads((tmp_path / "out" / f"laws_{n}" / "laws.json").read_text())["mean"]["before"])
              for n in ("x", "x-2", "x-3")}  # fmt: skip
    assert len(curves) == 3  # three different models, three different files
