"""`wings iit build|eval`, `wings laws`, `wings eval` on a saved tiny model (offline, end to end)."""

import json

import numpy as np
import pytest
from PIL import Image

from tiny import make_tiny_hub, save_hub_wings
from wings import WingsProcessor
from wings.cli import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    hub = make_tiny_hub(root / "hub")
    save_hub_wings(hub, root / "model")
    (root / "imgs").mkdir()
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    visual, text, llava = [], [], []
    for i in range(6):
        name = list(colours)[i % 2]
        Image.fromarray(np.full((32, 32, 3), colours[name], np.uint8)).save(root / "imgs" / f"{i}.png")
        visual.append({"id": f"v{i}", "question": "what colour is the image?", "choices": ["red", "blue"],
                       "answer": i % 2, "image": f"{i}.png", "subject": "colour"})
        text.append({"id": f"t{i}", "question": f"hello how are you? {i}", "choices": ["fine", "bad", "ok"],
                     "answer": 0, "subject": "greeting"})
        llava.append({"id": i, "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "hello <image>\nwhat colour is the image?"}, {"from": "gpt", "value": name}]})
    for name, rows in (("text.jsonl", text), ("visual.jsonl", visual)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "vqa.json").write_text(json.dumps(llava))
    return root, hub


def test_auto_processor_loads_a_saved_model(workspace):
    from transformers import AutoProcessor

    root, _ = workspace
    processor = AutoProcessor.from_pretrained(root / "model")
    assert isinstance(processor, WingsProcessor) and processor.image_seq_length == 4


def test_iit_build_and_eval(workspace, capsys):
    root, _ = workspace
    main(["iit", "build", "--text-pool", str(root / "text.jsonl"), "--visual-pool", str(root / "visual.jsonl"),
          "--output", str(root / "iit.jsonl"), "--per-setting", "3", "--seed", "1"])
    lines = (root / "iit.jsonl").read_text().splitlines()
    assert {json.loads(line)["setting"] for line in lines} == {"T", "T,T", "T,T,T", "T,T,V", "T,V", "V"}
    # Custom setting strings work too; score a short subset to keep the test fast.
    main(["iit", "build", "--text-pool", str(root / "text.jsonl"), "--visual-pool", str(root / "visual.jsonl"),
          "--output", str(root / "iit.jsonl"), "--per-setting", "3", "--settings", "T", "T,V", "V"])
    main(["iit", "eval", "--model", str(root / "model"), "--data", str(root / "iit.jsonl"), "--image-folder",
          str(root / "imgs"), "--method", "loglik", "--output", str(root / "iit_out")])
    assert (root / "iit_out" / "iit.png").stat().st_size > 0
    assert "T,V" in capsys.readouterr().out


def test_laws_and_compare(workspace, capsys):
    root, _ = workspace
    main(["laws", "--model", str(root / "model"), "--data", str(root / "vqa.json"), "--image-folder",
          str(root / "imgs"), "--output", str(root / "laws"), "--limit", "4"])
    result = json.loads((root / "laws" / "laws.json").read_text())
    assert result["n_samples"] == 4 and 0 <= result["attention_shift"] <= 2
    main(["laws", "--compare", str(root / "model"), str(root / "model"), "--data", str(root / "vqa.json"),
          "--image-folder", str(root / "imgs"), "--output", str(root / "cmp"), "--limit", "2"])
    assert (root / "cmp" / "laws_compare.png").exists()
    assert "attention shift" in capsys.readouterr().out


def test_eval_report(workspace, capsys):
    root, hub = workspace
    main(["eval", "--model", str(root / "model"), "--base-llm", str(hub / "llm"), "--text-pool",
          str(root / "text.jsonl"), "--vqa", str(root / "vqa.json"), "--image-folder", str(root / "imgs"),
          "--laws-data", str(root / "vqa.json"), "--output", str(root / "report"), "--limit", "4"])
    metrics = json.loads((root / "report" / "metrics.json").read_text())
    text = json.dumps(metrics)
    assert "model" in text and (root / "report" / "report.md").exists()
    out = capsys.readouterr().out
    # A fresh WINGS model computes what its LLM computes: retention is exactly 1.
    assert "1.000" in out


def test_chat_keeps_images_where_they_were_said(workspace):
    import io

    from wings.chat import chat_loop

    root, _ = workspace
    out = io.StringIO()
    history = chat_loop(str(root / "model"), lines=["hello", f"/image {root / 'imgs' / '0.png'}",
                                                    "what colour is the image?", "/quit", "never read"],
                        max_new_tokens=3, out=out)
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[2]["content"][0] == {"type": "image"} and history[0]["content"] == [{"type": "text", "text": "hello"}]
    assert out.getvalue().count("wings> ") == 2
