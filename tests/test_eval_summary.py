"""summary.md's default view: the spread over templates and choice orders (mean ± s.e. over the
variants) before the single-run score."""

from __future__ import annotations

import math

import pytest
from eval_helpers import build_tiny_model

from orizuru.eval import robustness as R
from orizuru.eval.evaluate import EvalConfig, evaluate, summary_markdown


def test_stderr_over_variants_by_hand():
    assert R.stderr_over([0.5, 0.7, 0.9]) == pytest.approx(0.2 / math.sqrt(3))  # sd 0.2 over 3 templates
    assert math.isnan(R.stderr_over([0.4]))


def test_summary_shows_the_spread_before_the_score(tmp_path):
    model = build_tiny_model(tmp_path / "model")
    res = evaluate(EvalConfig(model=model, tasks=["jcommonsenseqa"], limit=6, output=tmp_path / "out",
                              templates="all", permute_choices=2))
    r = res["tasks"]["jcommonsenseqa"]
    per_template = [v["acc"] for v in r["templates"].values()]
    assert r["template_stderr"]["acc"] == pytest.approx(R.stderr_over(per_template))
    assert r["permutations"]["n_orders"] == 3 and r["permutations"]["stderr"] >= 0
    text = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert text == summary_markdown(res)
    row = next(line for line in text.splitlines() if line.startswith("| jcommonsenseqa | acc |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    s, p = r["template_spread"]["acc"], r["permutations"]
    assert cells[2] == f"{s['mean']:.4f} ± {r['template_stderr']['acc']:.4f} [{s['min']:.4f}, {s['max']:.4f}] (k=3)"
    assert cells[3] == f"{p['mean']:.4f} ± {p['stderr']:.4f} [{p['min']:.4f}, {p['max']:.4f}] (k=3)"
    assert cells[4:6] == ["qa", f"{r['metrics']['acc']:.4f}"]
    assert text.index("over templates") < text.index("| score |")
    # one variant only: the summary says which flag shows the spread
    one = evaluate(EvalConfig(model=model, tasks=["jcommonsenseqa"], limit=2, output=tmp_path / "one"))
    row = next(line for line in summary_markdown(one).splitlines() if line.startswith("| jcommonsenseqa | acc |"))
    assert "1 (--templates all)" in row and "1 (--permute-choices N)" in row
