import pytest
from post_fixtures import single_thread, tiny_model_dir  # noqa: F401

from orizuru.demo.post import demo_dpo, demo_sft

pytestmark = pytest.mark.usefixtures("single_thread")


def test_demo_sft_then_dpo_report_before_and_after(tmp_path):
    base = tiny_model_dir(tmp_path / "base")
    out = demo_sft(base, tmp_path / "sft", steps=3)
    assert out["summary"]["step"] == 3 and len(out["samples"]) == 3
    assert all(set(s) == {"prompt", "before", "after"} and isinstance(s["after"], str) for s in out["samples"])
    out = demo_dpo(tmp_path / "sft" / "model", tmp_path / "dpo", steps=3)
    assert out["summary"]["step"] == 3 and "Rakuda" in out["note"]
    assert "→" in out["summary"]["val_margin (before → after)"] and len(out["samples"]) == 3
    assert (tmp_path / "dpo" / "model" / "tokenizer_config.json").is_file()
