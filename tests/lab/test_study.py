"""The frontier study: its plan (models, stages), resume guard, and `--quick` end to end (slow)."""

from __future__ import annotations

import json
import math

import pytest

from wings.lab.study import FULL_STUDY, QUICK_STUDY, StudyModel, lr_tag, run_study, stage2_plan, study_models


def test_plan_sweeps_both_methods_over_the_same_llm_lrs():
    models = study_models(FULL_STUDY)
    assert len(FULL_STUDY.lrs) >= 4 and min(FULL_STUDY.lrs) <= 3e-5 and max(FULL_STUDY.lrs) >= 1e-3
    for method in ("llava", "wings"):
        assert sorted(m.lr for m in models if m.method == method and not m.text_share) == sorted(FULL_STUDY.lrs)
        assert [m.name for m in models if m.method == method and m.text_share] == [f"{method}_text_share"]
    assert len({m.name for m in models}) == len(models)
    assert [lr_tag(x) for x in (3e-5, 1e-4, 3e-4, 1e-3)] == ["3e-5", "1e-4", "3e-4", "1e-3"]
    assert FULL_STUDY.lab.iit_per_setting >= 200


def test_stage2_gives_the_llm_and_the_textual_learner_the_swept_lr():
    wings = dict(o.split("=") for o in stage2_plan(StudyModel("w", "wings", 3e-4), FULL_STUDY).overrides)
    assert float(wings["train.llm"]) == float(wings["train.textual_learners"]) == 3e-4
    assert float(wings["train.visual_learners"]) == float(wings["train.router"]) == FULL_STUDY.lab.high_lr
    llava = stage2_plan(StudyModel("l", "llava", 3e-5, text_share=True), FULL_STUDY)
    assert float(dict(o.split("=") for o in llava.overrides)["train.llm"]) == 3e-5
    assert llava.data == "stage2_text_share" and llava.recipe == "llava_stage2"
    with pytest.raises(ValueError, match="unknown method"):
        stage2_plan(StudyModel("x", "lora", 1e-3), FULL_STUDY)


def test_bad_arguments_and_a_changed_study_in_the_same_folder_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown study"):
        run_study("pareto", output=str(tmp_path))
    with pytest.raises(ValueError, match="jobs and threads"):
        run_study(output=str(tmp_path), jobs=0)
    (tmp_path / "study_config.json").write_text(json.dumps({"study": "frontier", "seeds": 5}))
    with pytest.raises(ValueError, match="other settings .*seeds"):
        run_study(output=str(tmp_path), quick=True)


@pytest.mark.slow
def test_quick_study_end_to_end_and_resume(tmp_path, capfd):
    out = tmp_path / "frontier"
    metrics = run_study("frontier", output=str(out), quick=True, seeds=2, jobs=2)
    # Compared as JSON text: a quick study's frontiers may not overlap in retention, and NaN != NaN.
    written = json.loads((out / "metrics.json").read_text())["frontier_gap"]
    assert json.dumps(written, sort_keys=True) == json.dumps(metrics["frontier_gap"], sort_keys=True)
    models = study_models(QUICK_STUDY)
    assert set(metrics["models"]) == {m.name for m in models}
    for name, entry in metrics["models"].items():
        assert len(entry["seeds"]) == 2
        for seed in entry["seeds"]:
            for key in ("lr", "text_retention", "mm_acc", "vqa_acc", "iit", "attention_shift"):
                assert key in seed, (name, key)
            assert 0 <= seed["mm_acc"] <= 1 and 0 <= seed["vqa_acc"] <= 1
            for setting in ("T", "T,V", "T,T,V", "V"):
                stats = seed["iit"][setting]
                assert stats["low"] <= stats["acc"] <= stats["high"] and stats["n"] == QUICK_STUDY.lab.iit_per_setting
        assert (out / f"laws_{name}.png").exists() and (out / f"iit_{name}.png").exists()
    for key in ("frontier_gap", "shift_forgetting_spearman"):
        entry = metrics[key]
        assert {"value", "ci_low", "ci_high"} <= set(entry)
        if not math.isnan(entry["value"]):
            assert entry["ci_low"] <= entry["ci_high"]
    assert metrics["frontier_gap"]["verdict"] in ("above", "below", "level", "undecided")
    report = (out / "report.md").read_text()
    assert "frontiers.png" in report and "Spearman" in report and "LAB_NOTES" not in report
    assert (out / "frontiers.png").stat().st_size > 0
    capfd.readouterr()

    run_study("frontier", output=str(out), quick=True, seeds=2, jobs=1)  # every step is cached now
    again = capfd.readouterr().out
    assert " ..." not in again.split("[lab] wrote")[0]


def test_resume_guard_accepts_the_same_settings_and_names_a_changed_one(tmp_path):
    from dataclasses import asdict

    from wings.lab.study import _check_resume

    config = {"study": "frontier", "seeds": 3, "sizes": asdict(FULL_STUDY), "jobs": 2}
    _check_resume(tmp_path, config)
    _check_resume(tmp_path, {**config, "jobs": 1})  # tuples survive the JSON round trip; jobs may change
    with pytest.raises(ValueError, match=r"\(sizes\)"):
        _check_resume(tmp_path, {**config, "sizes": asdict(QUICK_STUDY)})
