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
    all_sums,
    answer_seq,
    fit,
    load_base,
    pad_batch,
    rank_share,
    schedule,
    split_val,
)
from orizuru.runtime import barrier, init_distributed, process_group, setup_device, world_info
from orizuru.tokenizer.chat import ChatTokenizer
from orizuru.tokenizer.tokenizer import Tokenizer
from orizuru.train.config import RunConfig
from orizuru.train.loop import Stage, gathered, run_stage


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


class Scorer(nn.Module):
    """The reward model as one forward, ids and last positions -> r(x, y), so that DDP and FSDP2,
    which wrap a module's forward, see the score head's parameters inside it."""

    def __init__(self, lm: Llama):
        super().__init__()
        self.lm = lm

    def forward(self, x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        hidden = self.lm(x, return_hidden=True)[torch.arange(len(last), device=x.device), last]
        return self.lm.score(hidden)[:, 0].float()


def scores(model: nn.Module, seqs: list[Seq], pad_id: int, device) -> torch.Tensor:
    """r(x, y) per sequence: the score head on each sequence's last hidden state. `model` is a
    reward-model Llama or a (wrapped) Scorer."""
    x, _ = pad_batch([Seq(s.ids + [pad_id], s.mask + [0]) for s in seqs], pad_id, device)
    last = torch.tensor([len(s.ids) - 1 for s in seqs], device=device)
    return (Scorer(model) if isinstance(model, Llama) else model)(x, last)


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
    rank, world = init_distributed()
    device, amp = setup_device(cfg.train.dtype, cfg.train.device)
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
    B = cfg.train.batch_size
    batches = Batches([len(c.ids) + len(r.ids) for c, r in train], B * world, cfg.train.seed)
    schedule(cfg.train, cfg.schedule.epochs, cfg.schedule.warmup_ratio, batches.per_epoch)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.toml")
        print(f"orizuru reward: {json.dumps(counts)}; {cfg.train.max_steps} steps, {world} process(es)", file=sys.stderr)

    def bt(scorer, groups, live: bool):
        """Bradley-Terry loss sum, pairs and metric sums; a stand-in batch (live False) weighs nothing."""
        r = scores(scorer, [s for g in groups for s in g], tok.pad_id, device).view(len(groups), 2)
        margin = r[:, 0] - r[:, 1]
        w = float(live)
        return -F.logsigmoid(margin).sum() * w, len(groups) * w, {"accuracy": (margin > 0).float().sum() * w, "margin": margin.sum() * w}

    def batch(step: int, m: int):
        idx, live = rank_share(batches(step * cfg.train.grad_accum + m), rank, world)
        return [train[i] for i in idx], live

    def loss(scorer, b):
        groups, live = b
        loss_sum, n, metrics = bt(scorer, groups, live)
        return loss_sum, n, {**metrics, "tokens": sum(len(s.ids) for g in groups for s in g) if live else 0}

    def evaluate(scorer) -> dict:
        sums = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0, "n": 0.0}
        for start in range(0, len(val), B * world):
            idx, live = rank_share(list(range(start, min(start + B * world, len(val)))), rank, world)
            loss_sum, n, metrics = bt(scorer, [val[i] for i in idx], live)
            for k, v in {"loss": loss_sum, **metrics, "n": n}.items():
                sums[k] += float(v)
        total = all_sums(sums, device)
        return {k: v / total["n"] for k, v in total.items() if k != "n"} if total["n"] else {}

    scorer = Scorer(model)
    scorer.eval()
    with torch.no_grad():
        before = evaluate(scorer)
    trained = run_stage(Stage("reward", batch, loss, evaluate), scorer, cfg.train, run_dir, device, amp)
    final = gathered(trained.model, lambda: Scorer(to_reward_model(Llama(model.cfg))))
    last = trained.last
    summary = {
        "step": cfg.train.max_steps, **counts,
        "val_accuracy_before": before.get("accuracy"), "val_accuracy": last.get("val_accuracy"), "val_loss": last.get("val_loss"),
    }
    if rank == 0:
        save_reward_model(final.lm, run_dir / "model", tok)
        write_json(run_dir / "summary.json", summary)
    barrier()
    return summary


def main(argv: list[str]) -> int:
    cfg = parse_command(RewardConfig, argv, "orizuru reward", __doc__.split("\n\n")[0])
    with process_group():
        summary = train_reward(cfg)
        if world_info()[0] == 0:
            print(json.dumps(summary, ensure_ascii=False))
    return 0
