"""Rho-1 selective language modelling (`train.select_ref`, `train.select_ratio`): the selection by hand,
bad input, a real pretrain run, and the planted-noise behaviour it exists for."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import sample_texts, tiny_overrides
from post_fixtures import single_thread  # noqa: F401

from orizuru.config import ConfigError, load_config
from orizuru.files import read_jsonl
from orizuru.model.checkpoint import load_model, save_model
from orizuru.model.config import ModelConfig
from orizuru.model.llama import Llama
from orizuru.post.finetune import PostTrain
from orizuru.tokenizer.tokenizer import Tokenizer, train_bpe
from orizuru.train.batches import Source, TokenBatches, val_batches
from orizuru.train.config import PretrainConfig, TrainConfig
from orizuru.train.loss import lm_loss, select_tokens, selective_lm_loss
from orizuru.train.pretrain import pretrain

pytestmark = pytest.mark.usefixtures("single_thread")


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are a given tensor, so every per-token loss is known."""

    def __init__(self, logits: torch.Tensor, trainable: bool):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone(), requires_grad=trainable)

    def forward(self, x, **kw):
        return self.logits


def hand_ce(row: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in row)) - row[target]


def test_selection_by_hand_and_ratio_one_is_the_plain_loss():
    g = torch.Generator().manual_seed(0)
    V, T = 5, 7
    model_logits, ref_logits = torch.randn(1, T, V, generator=g) * 2, torch.randn(1, T, V, generator=g) * 2
    y = torch.tensor([[0, 3, -100, 1, 4, 2, -100]])
    x = torch.zeros_like(y)
    valid = [t for t in range(T) if y[0, t] != -100]  # 5 targets
    ce = {t: hand_ce(model_logits[0, t].tolist(), int(y[0, t])) for t in valid}
    excess = {t: ce[t] - hand_ce(ref_logits[0, t].tolist(), int(y[0, t])) for t in valid}
    for ratio, k in ((0.6, 3), (0.5, 3), (0.2, 1), (0.7, 4), (1.0, 5)):  # k = ceil(ratio * 5); 0.7 * 5 = 3.5
        top = sorted(valid, key=lambda t: -excess[t])[:k]
        model, ref = FixedLogits(model_logits, True), FixedLogits(ref_logits, False)
        tcfg = TrainConfig(select_ratio=ratio)
        loss, n_sel, n_valid = selective_lm_loss(model, ref, x, y, tcfg, bos_id=None)
        assert (int(n_sel), int(n_valid)) == (k, 5)
        assert loss.item() == pytest.approx(sum(ce[t] for t in top), rel=1e-6)
        loss.backward()  # only the selected positions get a gradient; the reference none
        assert [t for t in range(T) if model.logits.grad[0, t].abs().sum() > 0] == sorted(top)
        assert ref.logits.grad is None
        chosen = select_tokens(torch.tensor([excess.get(t, 0.0) for t in range(T)]), y[0] != -100, ratio)
        assert chosen.nonzero().flatten().tolist() == sorted(top)
    # ties go to the earlier position; exactly k are chosen
    assert select_tokens(torch.tensor([1.0, 2.0, 2.0, 2.0]), torch.ones(4, dtype=torch.bool), 0.5).tolist() == [False, True, True, False]
    # ratio 1 on a real model: lm_loss's number exactly, with z-loss and document masking too
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, max_seq_len=32)
    m, r = Llama(cfg), Llama(cfg)
    m.init_weights(seed=0)
    r.init_weights(seed=1)
    ids = torch.randint(0, 64, (2, 17), generator=g)
    inp, tgt = ids[:, :-1], ids[:, 1:].clone()
    tgt[0, :3] = -100
    for kw in ({}, {"z_loss": 1e-3, "doc_mask": True}):
        plain = lm_loss(m, inp, tgt, TrainConfig(**kw), bos_id=1)
        sel, n_sel, n_valid = selective_lm_loss(m, r, inp, tgt, TrainConfig(select_ratio=1.0, **kw), bos_id=1)
        assert torch.equal(plain, sel) and int(n_sel) == int(n_valid) == 29
    # z-loss covers the selected positions only
    sel, n_sel, _ = selective_lm_loss(m, r, inp, tgt, TrainConfig(select_ratio=0.5, z_loss=1e-2), bos_id=None)
    base, _, _ = selective_lm_loss(m, r, inp, tgt, TrainConfig(select_ratio=0.5), bos_id=None)
    logits = m(inp).float().view(-1, 64)
    ce_all = F.cross_entropy(logits, tgt.reshape(-1), ignore_index=-100, reduction="none")
    ref_ce = F.cross_entropy(r(inp).float().view(-1, 64), tgt.reshape(-1), ignore_index=-100, reduction="none")
    chosen = select_tokens(ce_all - ref_ce, tgt.reshape(-1) != -100, 0.5)
    assert int(n_sel) == 15 and int(chosen.sum()) == 15
    assert (sel - base).item() == pytest.approx(1e-2 * torch.logsumexp(logits[chosen], -1).pow(2).sum().item(), rel=1e-4)


def _ref_dir(path, tokenizer: Tokenizer | None, vocab_size: int = 512):
    model = Llama(ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=vocab_size, max_seq_len=64))
    model.init_weights(seed=0)
    save_model(model, path, tokenizer)
    return path


def test_bad_select_ref_and_ratio_name_the_key(tmp_path, tiny_shards_dir, tiny_tokenizer_dir):
    def load(**extra):
        return load_config(PretrainConfig, overrides=tiny_overrides(tiny_shards_dir, tmp_path / "run", **extra))

    for ratio in ("0", "-0.5", "1.5"):
        with pytest.raises(ConfigError, match=r"^config key 'train.select_ratio' must be in \(0, 1\]"):
            load(**{"train.select_ratio": ratio})
    # the directory is checked when the run starts (a pipeline's earlier stage may build it), before any training
    with pytest.raises(ConfigError, match=r"^config key 'train.select_ref': .*nowhere does not exist"):
        pretrain(load(**{"train.select_ref": f'"{tmp_path / "nowhere"}"'}))
    with pytest.raises(ConfigError, match=r"^config key 'train.select_ref': .* has no config.json"):
        pretrain(load(**{"train.select_ref": f'"{tiny_tokenizer_dir}"'}))
    # another tokenizer of the same size: refused by its tokenizer.json, before any training
    other = Tokenizer(train_bpe(sample_texts(600)[300:], 512, show_progress=False))
    cfg = load(**{"train.select_ref": f'"{_ref_dir(tmp_path / "other", other)}"'})
    with pytest.raises(ConfigError, match=r"^config key 'train.select_ref': .*tokenizer.json is not the tokenizer of the shards"):
        pretrain(cfg)
    # no tokenizer.json to compare: the vocabulary sizes must agree
    small = _ref_dir(tmp_path / "small", None, vocab_size=256)
    with pytest.raises(ConfigError, match=r"^config key 'train.select_ref': .* has vocab_size 256, the run's model 512"):
        pretrain(load(**{"train.select_ref": f'"{small}"'}))
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
    # post-training stages do not select tokens: a set key is refused, not ignored
    with pytest.raises(ConfigError, match="'train.select_ref' is not used by this stage"):
        PostTrain(select_ref=str(small)).validate()


def test_pretrain_with_select_ref_logs_selected_frac_and_saves_a_llama(tmp_path, tiny_shards_dir, tiny_tokenizer_dir):
    from transformers import LlamaForCausalLM

    ref = _ref_dir(tmp_path / "ref", Tokenizer.load(tiny_tokenizer_dir))
    run = tmp_path / "run"
    cfg = load_config(PretrainConfig, overrides=tiny_overrides(
        tiny_shards_dir, run, **{"train.select_ref": f'"{ref}"', "train.max_steps": 10, "train.grad_accum": 2}))
    summary = pretrain(cfg)
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 11))
    # 4 x 32 = 128 targets per micro-batch, ceil(0.6 x 128) = 77 selected in each
    assert all(r["selected_frac"] == pytest.approx(77 / 128, abs=1e-6) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    # step 1's logged loss is the selected tokens' mean over both micro-batches, recomputed from the initial weights
    start = Llama(cfg.model)
    start.init_weights(seed=cfg.train.seed)
    batches = TokenBatches([Source(tiny_shards_dir, "train", 32)], [1.0], 4, 2, 1, cfg.train.seed)
    sums = [selective_lm_loss(start, load_model(ref), *map(torch.from_numpy, batches.batch(0, micro, 0)), cfg.train, None)
            for micro in range(2)]
    assert rows[0]["loss"] == pytest.approx(sum(s[0].item() for s in sums) / sum(int(s[1]) for s in sums), rel=1e-5)
    hf = LlamaForCausalLM.from_pretrained(run / "model").eval()
    ours = load_model(run / "model")
    # validation is the plain cross-entropy over every held-out target, as transformers computes it
    nats = n = 0.0
    with torch.no_grad():
        for xb, yb in val_batches(Source(tiny_shards_dir, "val", 32), 4, 2, 1, 0):
            xb, yb = torch.from_numpy(xb), torch.from_numpy(yb)
            logits = hf(input_ids=xb).logits
            assert (logits - ours(xb)).abs().max() < 1e-4
            nats += F.cross_entropy(logits.view(-1, logits.size(-1)), yb.reshape(-1), reduction="sum").item()
            n += yb.numel()
    assert summary["val_loss"] == pytest.approx(nats / n, rel=1e-5)


def test_rho1_beats_plain_on_clean_validation_of_a_noisy_corpus(tmp_path, tiny_tokenizer_dir):
    """Half the training characters are random-token spans; the reference saw only clean text.
    At equal tokens, Rho-1's clean validation loss is lower, and it reaches the plain run's final
    figure in fewer tokens. Three short runs on one thread: ~9 s on the shared 2-core machine."""
    from noise_synth import noisy_and_clean_shards

    noisy, clean = noisy_and_clean_shards(tmp_path, sample_texts(1145), tiny_tokenizer_dir, noise_frac=0.5)

    def run(name, data, steps, **extra):
        overrides = tiny_overrides(data, tmp_path / name, **{"train.max_steps": steps, "train.log_every": 20, "train.eval_every": 40,
                                                                "train.eval_batches": 32, "train.ckpt_every": 1000, **extra})
        pretrain(load_config(PretrainConfig, overrides=overrides))
        return [(r["tokens"], r["val_loss"]) for r in read_jsonl(tmp_path / name / "metrics.jsonl") if "val_loss" in r]

    run("ref", clean, 300)
    plain = run("plain", noisy, 400)
    rho1 = run("rho1", noisy, 400, **{"train.select_ref": f'"{tmp_path / "ref" / "model"}"'})
    assert [t for t, _ in plain] == [t for t, _ in rho1]
    target = plain[-1][1]
    assert rho1[-1][1] < target - 0.03, (plain, rho1)
    reached = next(t for t, v in rho1 if v <= target)
    assert reached <= 0.8 * plain[-1][0], (plain, rho1)


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_processes_select_as_one_with_accumulation(tmp_path, tiny_shards_dir, tiny_tokenizer_dir, fsdp):
    """Selection is per micro-batch and the step divides by the all-reduced selected count: 2 DDP
    (or FSDP2) ranks x batch 4 (each with its own reference copy) train as 1 process x batch 4 x 2 micro-steps.
    ~7 s on the shared 2-core machine (torchrun's start is most of it)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT
    from safetensors.torch import load_file

    ref = _ref_dir(tmp_path / "ref", Tokenizer.load(tiny_tokenizer_dir))
    common = {"train.select_ref": f'"{ref}"', "train.max_steps": 6, "train.select_ratio": 0.5}
    one = tmp_path / "one"
    pretrain(load_config(PretrainConfig, overrides=tiny_overrides(tiny_shards_dir, one, **common, **{"train.grad_accum": 2})))
    two = tmp_path / "two"
    sets = sum((["--set", o] for o in tiny_overrides(tiny_shards_dir, two, **common, **{"train.fsdp": str(fsdp).lower()})), [])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(29541 + fsdp), "-m", "orizuru.cli", "pretrain", *sets]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (read_jsonl(d / "metrics.jsonl") for d in (one, two))
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b):
        assert ra["selected_frac"] == rb["selected_frac"] == pytest.approx(64 / 128)
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4)
    wa, wb = load_file(one / "model" / "model.safetensors"), load_file(two / "model" / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


def test_a_pipeline_stage_can_name_its_reference_stage(tmp_path, tiny_tokenizer_dir):
    """`train.select_ref` is a stage input: it may name an earlier pretrain stage, whose model is then
    checked for only when this stage runs, and which this stage's hash depends on."""
    from orizuru.pipeline.plan import load_pipeline

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(f'{{"text": "文書{i}です。"}}\n' for i in range(20)), encoding="utf-8")
    train = "train = {{ seq_len = 32, batch_size = 4, max_steps = 4{extra} }}"
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f"""
[run]
out_dir = "{tmp_path / 'out'}"

[tokenize]
tokenizer = "{tiny_tokenizer_dir}"
input = ["{corpus}"]

[pretrain]
data.dirs = ["tokenize"]
{train.format(extra="")}

[pretrain_rho1]
data.dirs = ["tokenize"]
{train.format(extra=', select_ref = "pretrain", select_ratio = 0.5')}
""", encoding="utf-8")
    stages = {s.name: s for s in load_pipeline(pipeline).stages}
    assert stages["pretrain_rho1"].deps == ["tokenize", "pretrain"]
    assert stages["pretrain_rho1"].hash != stages["pretrain"].hash
