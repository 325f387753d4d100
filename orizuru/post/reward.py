"""`orizuru reward`: a Bradley-Terry reward model (InstructGPT step 2).

The LM's output projection gives way to a scalar head, r(x, y) = w . h_last (the final hidden
state of the last token), trained with -log sigmoid(r(x, y_w) - r(x, y_l)) on preference pairs.
Saved as an HF `LlamaForSequenceClassification` directory (`score.weight`, num_labels = 1), which
transformers loads and scores identically (it pools the last non-padding token, as we do).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from orizuru.config import parse_command, save_config
from orizuru.errors import UserError
from orizuru.files import atomic_dir, write_json
from orizuru.model.checkpoint import load_state, model_config_from_hf, model_config_to_hf, read_hf_config
from orizuru.model.llama import Llama
from orizuru.post.data import PrefData, read_preferences
from orizuru.post.finetune import (
    Batches,
    PostTrain,
    Schedule,
    Seq,
    answer_seq,
    fit,
    load_base,
    pad_batch,
    run_steps,
    schedule,
    split_val,
)
from orizuru.runtime import setup_device
from orizuru.tokenizer.chat import ChatTokenizer
from orizuru.tokenizer.tokenizer import Tokenizer
from orizuru.train.config import RunConfig


def to_reward_model(model: Llama, seed: int = 0) -> Llama:
    """HF's LlamaForSequenceClassification layout: the decoder (`model.*`) and a 1-output `score` head on
    its final hidden states, in place of the LM head (small random init, as HF initializes `score`)."""
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(model.cfg.dim, 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(1, model.cfg.dim, generator=g) * model.cfg.init_std)
    del model.lm_head  # tied or not, the embeddings stay with the decoder
    model.cfg.tie_embeddings = False
    model.score = head.to(model.model.embed_tokens.weight.device)
    return model


def scores(model: Llama, seqs: list[Seq], pad_id: int, device) -> torch.Tensor:
    """r(x, y) per sequence: the score head on each sequence's last hidden state."""
    x, _ = pad_batch([Seq(s.ids + [pad_id], s.mask + [0]) for s in seqs], pad_id, device)
    last = torch.tensor([len(s.ids) - 1 for s in seqs], device=device)
    hidden = model(x, return_hidden=True)[torch.arange(len(seqs), device=device), last]
    return model.score(hidden)[:, 0].float()


def save_reward_model(model: Llama, directory: str | Path, tok: Tokenizer) -> None:
    """HF LlamaForSequenceClassification directory (atomic); the parameter names are already HF's."""
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    config = model_config_to_hf(model.cfg, torch.float32, ids)
    config.update(architectures=["LlamaForSequenceClassification"], num_labels=1, tie_word_embeddings=False, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(directory) as tmp:
        write_json(tmp / "config.json", config)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        ChatTokenizer(tok.hf).save(tmp, model_max_length=model.cfg.max_seq_len)


def load_reward_model(directory: str | Path, device="cpu") -> tuple[Llama, Tokenizer]:
    directory = Path(directory)
    hf = read_hf_config(directory)
    if "LlamaForSequenceClassification" not in hf.get("architectures", []):
        raise UserError(f"{directory}/config.json: not a reward model (expected architectures ['LlamaForSequenceClassification'])")
    cfg = model_config_from_hf({**hf, "architectures": ["LlamaForCausalLM"]}, str(directory / "config.json"))
    model = to_reward_model(Llama(cfg))
    model.load_state_dict(load_state(directory), strict=True)
    return model.to(device).eval(), Tokenizer.load(directory)


@dataclass
class RewardConfig:
    model: str = "runs/sft/model"  # the LM to start from (usually the SFT model)
    data: PrefData = field(default_factory=PrefData)
    train: PostTrain = field(default_factory=PostTrain)
    schedule: Schedule = field(default_factory=lambda: Schedule(epochs=1, warmup_ratio=0.03))
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/reward"))


def train_reward(cfg: RewardConfig) -> dict:
    device, amp = setup_device(cfg.train.dtype)
    torch.manual_seed(cfg.train.seed)
    d = cfg.data
    pairs, singles, report = read_preferences(d.train, d.strict)
    if singles:
        raise UserError(f"{', '.join(d.train)}: {len(singles)} unpaired rows ({{completion, label}}); a Bradley-Terry reward model needs pairs")
    if not pairs:
        raise UserError(f"{', '.join(d.train)}: no usable preference pairs ({report.rows} read, {report.skipped} skipped)")
    if d.val:
        val_pairs = read_preferences(d.val, d.strict)[0]
        train_pairs = pairs
    else:
        train_pairs, val_pairs = split_val(pairs, d.val_fraction, cfg.train.seed)
    model, tok = load_base(cfg.model, device)
    to_reward_model(model, cfg.train.seed)
    max_len = cfg.train.seq_len

    def encode(ps, what):
        out, truncated = [], 0
        for n, p in enumerate(ps):
            kept, t, dropped = fit([answer_seq(tok, p.prompt, p.chosen), answer_seq(tok, p.prompt, p.rejected)], max_len, d.overlong, f"{what} {n}, answer")
            truncated += t
            if not dropped:
                out.append(kept)
        return out, truncated

    train, truncated = encode(train_pairs, "training pair")
    val, _ = encode(val_pairs, "validation pair")
    if not train:
        raise UserError("no preference pair fits train.seq_len; raise it or shorten the data")
    counts = {"rows": report.rows, "skipped": report.skipped, "truncated": truncated, "train": len(train), "val": len(val)}
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    batches = Batches([len(c.ids) + len(r.ids) for c, r in train], cfg.train.batch_size, cfg.train.seed)
    schedule(cfg.train, cfg.schedule.epochs, cfg.schedule.warmup_ratio, batches.per_epoch)
    save_config(cfg, run_dir / "config.toml")
    print(f"orizuru reward: {json.dumps(counts)}; {cfg.train.max_steps} steps", file=sys.stderr)

    def bt(groups):
        r = scores(model, [s for g in groups for s in g], tok.pad_id, device).view(len(groups), 2)
        margin = r[:, 0] - r[:, 1]
        return -F.logsigmoid(margin).mean(), {"accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item()}

    def micro(step: int, m: int):
        groups = [train[i] for i in batches(step * cfg.train.grad_accum + m)]
        loss, metrics = bt(groups)
        return loss, {**metrics, "tokens": sum(len(s.ids) for g in groups for s in g)}

    def evaluate() -> dict:
        sums, n = {}, 0
        for b in range(0, len(val), cfg.train.batch_size):
            groups = val[b : b + cfg.train.batch_size]
            loss, metrics = bt(groups)
            for k, v in {"loss": loss.item(), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + v * len(groups)
            n += len(groups)
        return {k: v / n for k, v in sums.items()} if n else {}

    model.eval()
    with torch.no_grad():
        before = evaluate()
    last = run_steps("reward", model, cfg.train, run_dir, micro, evaluate, device, amp)
    save_reward_model(model, run_dir / "model", tok)
    summary = {
        "step": cfg.train.max_steps, **counts,
        "val_accuracy_before": before.get("accuracy"), "val_accuracy": last.get("val_accuracy"), "val_loss": last.get("val_loss"),
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def main(argv: list[str]) -> int:
    print(json.dumps(train_reward(parse_command(RewardConfig, argv, "orizuru reward", __doc__.split("\n\n")[0])), ensure_ascii=False))
    return 0
