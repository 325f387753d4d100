import json

import numpy as np
import pytest

from orizuru.cli import main as cli
from orizuru.errors import UserError
from orizuru.scaling.fit import approach2, fit, fit_law, predict
from orizuru.scaling.plan import Law
from orizuru.scaling.sweep import load_runs

TRUE = Law(E=1.9, A=350.0, B=2500.0, alpha=0.30, beta=0.45)  # asymmetric: alpha != beta
BUDGETS = [1e17, 4e17, 1.6e18, 6.4e18]


def centred_grid(law, budgets=BUDGETS, spread=8.0, k=7):
    """k sizes per budget, log-spaced within a factor `spread` of the true optimum (C = 6ND)."""
    rows = []
    for c in budgets:
        n0, _ = law.optimum_6nd(c)
        for f in np.geomspace(1 / spread, spread, k):
            n = n0 * f
            rows.append({"N": n, "D": c / (6 * n), "C": c})
    return rows


def with_losses(rows, law, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    for r in rows:
        r["L"] = law.loss(r["N"], r["D"]) * float(np.exp(rng.normal(0, noise))) if noise else law.loss(r["N"], r["D"])
        r["name"] = r["dir"] = f"C{r['C']:.0e}-N{r['N']:.3g}"
    return rows


def arrays(rows):
    return (np.array([r[k] for r in rows]) for k in "NDCL")


def test_approach3_keeps_the_terms_non_negative_and_finds_a_zero_one():
    # no irreducible loss: the best E is on its constraint, 0, and the rest is still recovered
    law0 = Law(E=0.0, A=TRUE.A, B=TRUE.B, alpha=TRUE.alpha, beta=TRUE.beta)
    N, D, C, L = arrays(with_losses(centred_grid(law0), law0))
    law, _ = fit_law(N, D, L)
    assert 0 <= law.E < 1e-6
    for k in ("A", "B", "alpha", "beta"):
        assert getattr(law, k) == pytest.approx(getattr(law0, k), rel=2e-3), k


def test_approach3_recovers_constants_noise_free():
    N, D, C, L = arrays(with_losses(centred_grid(TRUE), TRUE))
    law, info = fit_law(N, D, L)
    for k in ("E", "A", "B", "alpha", "beta"):
        assert getattr(law, k) == pytest.approx(getattr(TRUE, k), rel=2e-3), k
    assert not info["at_edge"]


def test_approach3_recovers_constants_with_noise():
    rows = with_losses(centred_grid(TRUE, k=9), TRUE, noise=0.003, seed=3)
    res = fit(rows, n_boot=12)
    a3 = res["approach3"]
    p = a3["params"]
    assert p["alpha"] == pytest.approx(TRUE.alpha, abs=0.05)
    assert p["beta"] == pytest.approx(TRUE.beta, abs=0.05)
    assert p["E"] == pytest.approx(TRUE.E, abs=0.1)
    assert a3["a"] == pytest.approx(TRUE.beta / (TRUE.alpha + TRUE.beta), abs=0.03)
    lo, hi = a3["interval90"]["alpha"]
    assert lo < hi
    # extrapolation 8x past the largest budget, at that budget's optimum: within 1%
    n, d = TRUE.optimum_6nd(8 * BUDGETS[-1])
    assert predict(res, n, d)["predicted_loss"] == pytest.approx(TRUE.loss(n, d), rel=0.01)


def test_approach2_unbiased_on_centred_grids_and_biased_on_fixed_sizes():
    a_true = TRUE.beta / (TRUE.alpha + TRUE.beta)
    # sizes centred on each optimum: the IsoFLOP shape repeats, so the exponent comes out right
    N, D, C, L = arrays(with_losses(centred_grid(TRUE), TRUE))
    a2 = approach2(N, D, C, L)
    assert a2["status"] == "ok" and a2["a"] == pytest.approx(a_true, abs=2e-3)
    assert a2["a"] + a2["b"] == pytest.approx(1.0, abs=1e-6)  # N D = C / 6
    # the same sizes at every budget (how sweeps are run): the parabola's error drifts with C
    rows = []
    sizes = np.geomspace(TRUE.optimum_6nd(BUDGETS[0])[0] / 4, TRUE.optimum_6nd(BUDGETS[-1])[0] * 4, 12)
    for c in BUDGETS:
        rows += [{"N": n, "D": c / (6 * n), "C": c} for n in sizes]
    rows = with_losses(rows, TRUE)
    N, D, C, L = arrays(rows)
    a2 = approach2(N, D, C, L)
    assert a2["status"] == "ok"
    bias = a2["a"] - a_true
    assert abs(bias) > 0.005  # measurable bias
    # and the fit reports it: replaying Approach 2 on its (here exact) Approach-3 law
    res = fit(rows, n_boot=0)
    assert res["approach3"]["approach2_bias"]["bias"] == pytest.approx(bias, abs=2e-3)


def test_too_few_points_says_so():
    rows = with_losses(centred_grid(TRUE, budgets=BUDGETS[:1], k=5), TRUE)
    res = fit(rows, n_boot=0)
    assert res["approach3"]["status"] == "insufficient" and "params" not in res["approach3"]
    assert res["approach2"]["status"] == "insufficient"
    with pytest.raises(UserError, match="no Approach-3 law"):
        predict(res, 1e8, 1e9)


def write_runs(root, rows):
    for r in rows:
        d = root / r["name"]
        d.mkdir(parents=True)
        (d / "config.toml").write_text("[model]\nvocab_size = 1000\ndim = 64\n")
        (d / "summary.json").write_text(json.dumps(
            {"step": 100, "params": r["N"], "tokens": r["D"], "flops": r["C"], "train_loss": r["L"], "val_loss": r["L"]}))


def test_cli_fit_report_and_predict(tmp_path, capsys):
    rows = with_losses(centred_grid(TRUE, k=5), TRUE, noise=0.002)
    write_runs(tmp_path / "sweep", rows)
    out = tmp_path / "fit"
    assert cli(["scaling", "fit", str(tmp_path / "sweep"), "--out", str(out), "--bootstrap", "10"]) == 0
    text = capsys.readouterr().out
    assert "Approach 2" in text and "Approach 3" in text
    for name in ("fit.json", "report.md", "loss_vs_compute.png", "isoflop.png", "frontier.png"):
        assert (out / name).stat().st_size > 0
    # a held-out bigger run, 8x the largest budget
    n, d = TRUE.optimum_6nd(8 * BUDGETS[-1])
    big = {"name": "big", "N": n, "D": d, "C": 6 * n * d, "L": TRUE.loss(n, d)}
    write_runs(tmp_path / "held", [big])
    assert cli(["scaling", "predict", "--fit", str(out / "fit.json"), "--run", str(tmp_path / "held" / "big"),
                "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert abs(pred["error"]) < 0.01 and pred["actual_loss"] == pytest.approx(big["L"])
    assert cli(["scaling", "predict", "--fit", str(out / "fit.json"), "--params", "1e9", "--tokens", "2e10"]) == 0
    assert "predicted loss" in capsys.readouterr().out
    # contradictory: --params that is not the run's
    assert cli(["scaling", "predict", "--fit", str(out / "fit.json"), "--run", str(tmp_path / "held" / "big"),
                "--params", "5"]) == 2
    assert "contradicts" in capsys.readouterr().err


def test_unfinished_or_missing_runs_are_errors(tmp_path):
    rows = with_losses(centred_grid(TRUE, k=5), TRUE)
    write_runs(tmp_path, rows)
    (tmp_path / rows[0]["name"] / "summary.json").unlink()
    with pytest.raises(UserError, match="did not finish"):
        load_runs([str(tmp_path)])
    with pytest.raises(UserError, match="not found"):
        load_runs([str(tmp_path / "nope")])
    with pytest.raises(UserError, match="at least 101 steps"):
        load_runs([str(tmp_path / rows[1]["name"])], min_steps=101)
    assert len(load_runs([str(tmp_path / r["name"]) for r in rows[1:]], min_steps=100)) == len(rows) - 1
    runs = load_runs([str(tmp_path / rows[1]["name"])], count="non-embedding")
    assert runs[0]["N"] == pytest.approx(rows[1]["N"] - 2 * 1000 * 64)


TINY_MODEL = """[model]
vocab_size = 512
head_dim = 16
tie_embeddings = true
max_seq_len = 32
[train]
seq_len = 32
batch_size = 4
"""  # the tiny sweeps' shared shapes; each test adds its own [train] keys after these


@pytest.mark.slow  # ~10 s of CPU, much more wall time on a loaded machine
def test_real_sweep_runs_resumes_and_feeds_the_fit(tmp_path, tiny_shards_dir, capsys):
    config = tmp_path / "sweep.toml"
    config.write_text(f"""
[sweep]
dir = "{tmp_path / 'sweep'}"
computes = [1.5e8, 3e8]
depths = [1, 2]
aspect = 16
min_steps = 4
{TINY_MODEL}warmup_steps = 2
lr = 3e-3
eval_batches = 2
[data]
dirs = ["{tiny_shards_dir}"]
""")
    assert cli(["scaling", "sweep", "--config", str(config)]) == 0
    capsys.readouterr()
    manifest = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    rows = manifest["runs"]
    assert len(rows) >= 3 and all(r["status"] == "done" and r["val_loss"] > 0 for r in rows)
    for r in rows:  # the budget is spent: pretrain's own FLOP count is within one step of the nominal C
        step_flops = r["flops"] / r["steps"]
        assert abs(r["flops"] - r["compute"]) <= step_flops / 2 + 1
    stamps = {r["name"]: (tmp_path / "sweep" / r["name"] / "summary.json").stat().st_mtime_ns for r in rows}
    assert cli(["scaling", "sweep", "--config", str(config)]) == 0  # rerun: every run is skipped
    assert stamps == {r["name"]: (tmp_path / "sweep" / r["name"] / "summary.json").stat().st_mtime_ns for r in rows}
    runs = load_runs([str(tmp_path / "sweep")])
    assert sorted(r["name"] for r in runs) == sorted(stamps)
    # a sweep is the runs its manifest lists: a run dir left over from another grid is not fitted
    import shutil

    shutil.copytree(tmp_path / "sweep" / rows[0]["name"], tmp_path / "sweep" / "C9e99-d9")
    assert sorted(r["name"] for r in load_runs([str(tmp_path / "sweep")])) == sorted(stamps)
    # too few runs for five parameters: the fit says so instead of printing numbers
    assert cli(["scaling", "fit", str(tmp_path / "sweep"), "--bootstrap", "0"]) == 0
    assert "not enough data" in capsys.readouterr().out
    # the same grid two runs at a time, each in its own process: the same runs and losses
    # (1 thread each here against the default above: float sums may differ in the last bits)
    assert cli(["scaling", "sweep", "--config", str(config), "--set", f'sweep.dir="{tmp_path / "par"}"', "--jobs", "2"]) == 0
    par = {r["name"]: r for r in json.loads((tmp_path / "par" / "sweep.json").read_text())["runs"]}
    assert par.keys() == {r["name"] for r in rows}
    for r in rows:
        assert par[r["name"]]["status"] == "done" and par[r["name"]]["val_loss"] == pytest.approx(r["val_loss"], rel=1e-3)
        assert "pretrain" in (tmp_path / "par" / r["name"] / "train.log").read_text()


def test_sweep_config_errors_name_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[sweep]\ncomputes = [1e9]\ndepths = [1]\n[data]\ndirs = []\n')
    assert cli(["scaling", "sweep", "--config", str(config)]) == 2
    config.write_text('[sweep]\ncomputes = [-1.0]\ndepths = [1]\n[data]\ndirs = ["x"]\n')
    with pytest.raises(UserError, match="sweep.computes"):
        from orizuru.config import load_config
        from orizuru.scaling.sweep import SweepConfig

        load_config(SweepConfig, config)


def test_sweep_grid_leaves_out_short_runs_and_runs_that_repeat_the_data_too_often(tmp_path, tiny_shards_dir):
    import math

    from orizuru.model.config import ModelConfig
    from orizuru.scaling.sweep import SweepConfig, SweepSection, sweep_runs
    from orizuru.train.config import DataConfig, TrainConfig

    unique = sum(i["train_tokens"] for i in json.loads((tiny_shards_dir / "meta.json").read_text())["inputs"])
    train = TrainConfig(seq_len=32, batch_size=4)
    cfg = SweepConfig(
        sweep=SweepSection(dir=str(tmp_path), computes=[3e8, 3e10], depths=[1, 2, 3, 4], aspect=16, min_steps=10, max_epochs=2),
        model=ModelConfig(vocab_size=512, head_dim=16, tie_embeddings=True, max_seq_len=32),
        train=train, data=DataConfig(dirs=[str(tiny_shards_dir)]),
    )
    runs, skipped = sweep_runs(cfg)
    assert len(runs) + len(skipped) == 8
    assert any("epochs > sweep.max_epochs" in s for s in skipped) and any("< sweep.min_steps" in s for s in skipped)
    for _, _, run in runs:
        assert run.train.max_steps >= 10 and run.train.max_steps * 4 * 32 <= 2 * unique
        assert run.model.ffn_dim == 8 * math.ceil(run.model.dim / 3)  # 8/3 dim, smooth across sizes
    cfg.sweep.max_epochs = 0  # no cap: only the step floor leaves points out
    runs_uncapped, skipped_uncapped = sweep_runs(cfg)
    assert len(runs_uncapped) > len(runs) and all("min_steps" in s for s in skipped_uncapped)


@pytest.mark.slow  # ~15 s: a tokenizer and shards from 5.3M characters
def test_scaling_data_covers_the_shipped_text_once(tmp_path, capsys):
    assert cli(["scaling", "data", "--out", str(tmp_path), "--vocab-size", "512"]) == 0
    stats = json.loads(capsys.readouterr().out)
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert [i["source"].split("/")[-1] for i in meta["inputs"]] == ["wiki.jsonl", "aozora.jsonl", "aozora_more.jsonl.gz"]
    # the held-out run of configs/scaling/cpu-tiny.toml (1.6e13 FLOPs at depth 5: 5.0M tokens) stays within one epoch
    assert stats["train_tokens"] > 5.1e6 and meta["vocab_size"] == 512
    assert cli(["scaling", "data", "--out", str(tmp_path), "--vocab-size", "300"]) == 2  # below bytes + specials


def test_lr_rules_by_hand():
    from orizuru.scaling.plan import LR_RULES, make_plan, peak_lr

    # DeepSeek's rule depends on compute only, capped at 0.02 below its fitted range
    assert peak_lr("deepseek", 1e21, 64) == pytest.approx(0.3118 * 1e21**-0.125)
    assert peak_lr("deepseek", 1e21, 64) == peak_lr("deepseek", 1e21, 4096)
    assert peak_lr("deepseek", 1e9, 64) == 0.02  # 0.3118 C^-0.125 = 0.02 at C = 3.5e9
    assert make_plan(compute=1e21)["train"]["lr"] == pytest.approx(0.3118 * 1e21**-0.125)  # what `orizuru plan` writes
    r = LR_RULES["muon-cpu"]
    for width in (16, 48, 112):
        assert peak_lr("muon-cpu", 1e12, width) == pytest.approx(min(r.coef * width**-r.width_exp, r.cap))
    assert peak_lr("muon-cpu", 1e12, 96) / peak_lr("muon-cpu", 1e12, 48) == pytest.approx(2**-r.width_exp)


def test_sweep_runs_get_the_per_size_lr(tmp_path, tiny_shards_dir, capsys):
    from orizuru.scaling.plan import peak_lr

    config = tmp_path / "sweep.toml"
    config.write_text(f"""
[sweep]
dir = "{tmp_path / 'sweep'}"
computes = [3e8]
depths = [1, 2, 3]
aspect = 16
min_steps = 1
max_epochs = 0
lr_rule = "muon-cpu"
{TINY_MODEL}lr = 3e-3
[data]
dirs = ["{tiny_shards_dir}"]
""")
    assert cli(["scaling", "sweep", "--config", str(config), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for depth, line in zip((1, 2, 3), lines):
        assert f"lr {peak_lr('muon-cpu', 3e8, 16 * depth):.3g}" in line
    assert cli(["scaling", "sweep", "--config", str(config), "--dry-run", "--set", 'sweep.lr_rule="fixed"']) == 0
    assert all("lr 0.003 " in line for line in capsys.readouterr().out.splitlines())
    assert cli(["scaling", "sweep", "--config", str(config), "--dry-run", "--set", 'sweep.lr_rule="mup"']) == 2
    assert "sweep.lr_rule" in capsys.readouterr().err
