"""The README's demo runs end to end offline (tiny sizes)."""

import pytest

from wings.demo import run_demo


@pytest.mark.slow
def test_demo_runs(tmp_path, capsys):
    answer = run_demo(seed=0, steps=40, output=str(tmp_path / "demo"))
    out = capsys.readouterr().out
    assert "[demo] wings:" in out and (tmp_path / "demo" / "chat_image.png").exists()
    assert isinstance(answer, str)
    assert (tmp_path / "demo" / "stage2" / "model.safetensors").exists()
