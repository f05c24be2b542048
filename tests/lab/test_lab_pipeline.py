"""`wings lab --quick` end to end (offline), and resuming reuses finished steps."""

import json

import pytest

from wings.cli import main
from wings.lab.pipeline import DEFAULT_MODELS, LabConfig, cached_step
from wings.lab.report import line_verdict


@pytest.mark.slow
def test_quick_lab_end_to_end_and_resume(tmp_path, capfd):
    out = tmp_path / "lab"
    main(["lab", "--quick", "--output", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["base"]["text_acc"] <= 1.0
    report = (out / "report.md").read_text()
    for name in DEFAULT_MODELS:
        entry = metrics[name]
        for key in ("text_acc", "text_retention", "vqa_acc", "iit", "attention_shift", "train_seconds"):
            assert key in entry, (name, key)
        assert 0.0 <= entry["text_acc"] <= 1.0 and 0.0 <= entry["vqa_acc"] <= 1.0
        assert entry["text_retention"] >= 0.0 and entry["train_seconds"] > 0
        assert 0.0 <= entry["attention_shift"] <= 2.0
        assert set(entry["iit"]) == {"T", "T,T", "T,T,T", "T,T,V", "T,V", "V"}
        assert all(0.0 <= v <= 1.0 for v in entry["iit"].values())
        assert f"`{name}`" in report
        assert (out / f"laws_{name}.png").stat().st_size > 0 and (out / f"iit_{name}.png").exists()
    assert (out / "retention_vs_vqa.png").stat().st_size > 0
    assert "WINGS lies" in report or "Not decided" in report
    first = capfd.readouterr().out

    main(["lab", "--quick", "--output", str(out)])  # every step is cached now
    again = capfd.readouterr().out
    assert again.count(": cached") >= 4 + 2 * len(DEFAULT_MODELS) and " ..." not in again.split("[lab] wrote")[0]
    assert json.loads((out / "metrics.json").read_text())["wings"]["vqa_acc"] == metrics["wings"]["vqa_acc"]
    assert first


def test_cached_step_runs_once(tmp_path):
    calls = []
    for _ in range(2):
        result = cached_step(tmp_path / "s", "step", lambda f: calls.append(f) or {"value": 3})
    assert calls == [tmp_path / "s"] and result["value"] == 3


def test_line_verdict_from_numbers():
    def m(vqa, ret):
        return {"vqa_acc": vqa, "text_retention": ret}

    above, gap = line_verdict({"llava": m(0.8, 0.6), "llava_low_lr": m(0.6, 1.0), "wings": m(0.8, 0.9)})
    assert "above" in above and gap == pytest.approx(0.3)
    on, gap = line_verdict({"llava": m(0.8, 0.6), "llava_low_lr": m(0.6, 1.0), "wings": m(0.7, 0.8)})
    assert "on the LLaVA line" in on and abs(gap) < 1e-9
    below, _ = line_verdict({"llava": m(0.8, 0.6), "llava_low_lr": m(0.6, 1.0), "wings": m(0.6, 0.7)})
    assert "below" in below
    # The full lab's case: both LLaVA models at nearly the same VQA; WINGS ties the low-LR one.
    tie, gap = line_verdict({"llava": m(0.857, 0.418), "llava_low_lr": m(0.854, 0.997), "wings": m(0.862, 0.997)})
    assert "on the LLaVA line" in tie and gap == pytest.approx(0.0) and "`llava_low_lr`" in tie
    # Beyond every LLaVA model's VQA, with their best retention: above.
    ahead, _ = line_verdict({"llava": m(0.80, 0.5), "llava_low_lr": m(0.70, 0.99), "wings": m(0.90, 0.99)})
    assert "above" in ahead


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        LabConfig(models=("gpt",))


def test_auto_threads_backs_off_on_a_busy_machine(monkeypatch):
    import os

    from wings.cli import auto_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert auto_threads() == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    assert auto_threads() == 1
