"""`export_hub`: the exported directory loads with transformers alone (the package out of sight) and
computes what the original model computes."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tiny import save_tiny_wings
from wings import WingsForConditionalGeneration, WingsProcessor
from wings.export import ExportError, export_hub, flatten_metrics, remote_code_files

QUESTION = "what colour is the image?"

# Runs with `python -I -S`: no PYTHONPATH, no current directory, no site-packages .pth files (which
# is how an editable install of the package gets onto sys.path); the libraries are added by hand.
CLEAN_SCRIPT = r"""
import importlib.util, sys
sys.path.extend(sys.argv[3:])
assert importlib.util.find_spec("wings") is None, "the wings package is visible"
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

hub, image = sys.argv[1], sys.argv[2]
model = AutoModelForImageTextToText.from_pretrained(hub, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(hub, trust_remote_code=True)
messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "QUESTION"}]}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
with torch.no_grad():
    logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
assert "wings" not in sys.modules and type(model).__module__.startswith("transformers_modules"), type(model).__module__
torch.save({"input_ids": inputs["input_ids"], "pixel_values": inputs["pixel_values"], "logits": logits,
            "generated": generated, "class": type(model).__name__, "processor": type(processor).__name__},
           hub + "/clean_run.pt")
""".replace("QUESTION", QUESTION)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    source = save_tiny_wings(root / "model", seed=7)
    recipe = {"name": "wings_stage2", "method": "wings", "stage": 2, "train": {"textual_learners": 1e-4, "router": 1e-4}}
    (source / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (source / "metrics.json").write_text(json.dumps({"base_text_acc": 0.5, "models": [
        {"name": "wings", "text_acc": 0.48, "vqa_acc": 0.7, "retention": 0.96}]}))
    hub = export_hub(source, root / "hub")
    image = root / "red.png"
    Image.fromarray(np.full((24, 40, 3), (220, 30, 30), dtype=np.uint8)).save(image)
    return root, source, hub, image


def test_exported_dir_loads_without_the_package_and_matches(exported, tmp_path):
    root, source, hub, image = exported
    paths = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    command = [sys.executable, "-I", "-S", "-c", CLEAN_SCRIPT, str(hub), str(image), *sorted(paths)]
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    clean = torch.load(hub / "clean_run.pt")
    assert clean["class"] == "WingsForConditionalGeneration" and clean["processor"] == "WingsProcessor"

    # The original directory, loaded with the package, on inputs built independently of the processor.
    model = WingsForConditionalGeneration.from_pretrained(source).eval()
    processor = WingsProcessor.from_pretrained(source)
    text = f"<|im_start|>user\n{'<image>' * processor.image_seq_length}\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    input_ids = torch.tensor([processor.tokenizer(text, add_special_tokens=False)["input_ids"]])
    assert torch.equal(clean["input_ids"], input_ids)
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=clean["pixel_values"]).logits
        generated = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                   pixel_values=clean["pixel_values"], max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(clean["logits"], logits, rtol=0, atol=1e-6)
    assert torch.equal(clean["generated"], generated)


def test_export_contents_and_model_card(exported):
    _, source, hub, _ = exported
    config = json.loads((hub / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_wings.WingsForConditionalGeneration"
    assert config["auto_map"]["AutoConfig"] == "configuration_wings.WingsConfig"
    assert json.loads((hub / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": "processing_wings.WingsProcessor"}
    code = {p.name: p.read_text() for p in hub.glob("*.py")}
    assert {"configuration_wings.py", "modeling_wings.py", "processing_wings.py"} <= set(code)
    for name, text in code.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                absolute_package = node.level == 0 and (node.module or "").split(".")[0] == "wings"
                assert node.level <= 1 and not absolute_package, (name, node.lineno)
                if node.level:
                    assert f"{node.module}.py" in code, (name, node.module)  # flat, and shipped
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for top in {m.split(".")[0] for m in modules}:
                    # A user needs transformers, torch and pillow (and jinja2, which transformers' chat templates
                    # need); nothing else outside the standard library.
                    assert top in {"torch", "transformers", "PIL", "jinja2"} | sys.stdlib_module_names, (name, top)
    card = (hub / "README.md").read_text()
    for expected in ("pipeline_tag: image-text-to-text", "| learner_rank | 4 |", "| router | segment |",
                     "wings_stage2", "textual_learners 0.0001", "models[wings].retention | 0.96",
                     "trust_remote_code=True", "siglip_vision_model"):
        assert expected in card, expected
    assert (hub / "recipe.yaml").is_file() and (hub / "model.safetensors").is_file()


def test_code_files_come_from_the_package_sources():
    import wings.modeling.lorra as lorra

    files = remote_code_files()
    # Every class and function of the package module is in its flat copy, byte for byte (the imports are rewritten).
    source = Path(lorra.__file__).read_text()
    assert source[source.index("\nclass "):] in files["wings_modeling_lorra.py"]
    assert "from .wings_modeling_rope import apply_rope, rotate" in files["wings_modeling_attention.py"]
    assert "from .configuration_wings import WingsConfig" in files["modeling_wings.py"]


def test_export_refuses_bad_paths(exported, tmp_path):
    _, source, hub, _ = exported
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_hub(source, hub)
    with pytest.raises(ExportError, match="no config.json"):
        export_hub(tmp_path, tmp_path / "out")
    with pytest.raises(ExportError, match="metrics file .*nope.json"):
        export_hub(source, tmp_path / "out", metrics=tmp_path / "nope.json")


def test_flatten_metrics_names_list_items():
    rows = dict(flatten_metrics({"a": {"b": 0.123456, "c": None}, "models": [{"name": "x", "acc": 1}], "n": [1, 2]}))
    assert rows == {"a.b": "0.1235", "models[x].name": "x", "models[x].acc": "1", "n": "1, 2"}


def test_wings_export_llm_writes_a_plain_llm_with_the_trained_weights(exported, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wings.cli import main

    _, source, _, _ = exported
    out = tmp_path / "llm"
    assert main(["export-llm", str(source), "--output", str(out)]) == 0
    llm = AutoModelForCausalLM.from_pretrained(out).eval()
    model = WingsForConditionalGeneration.from_pretrained(source).eval()
    assert type(llm) is type(model.language_model)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tokenizer("hello how are you?")["input_ids"]])
    model.reset_learners()  # zero learners: the WINGS model computes exactly its LLM on text
    with torch.no_grad():
        torch.testing.assert_close(llm(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    assert main(["export-llm", str(source), "--output", str(out)]) == 1  # not empty: refused in one line
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: export output")
