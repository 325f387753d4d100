"""`orizuru dpo`: preference optimisation without a reward model: DPO, IPO, hinge (RSO), KTO.

With h = [log pi(y_w|x) - log ref(y_w|x)] - [log pi(y_l|x) - log ref(y_l|x)] (sums over answer tokens):
  DPO   (Rafailov et al. 2023)  -log sigmoid(beta * h)
  IPO   (Azar et al. 2024)      (h - 1 / (2 beta))^2
  hinge (RSO, Liu et al. 2024)  max(0, 1 - beta * h)
  KTO   (Ethayarajh et al. 2024), unpaired: with r = log pi(y|x) - log ref(y|x) and z = max(0, mean r
        over the batch, no gradient) as the reference point, desirable y cost w_d (1 - sigmoid(beta (r - z)))
        and undesirable y cost w_u (1 - sigmoid(beta (z - r))). (The paper estimates z from mismatched
        (x, y') pairs; the batch mean of r is the cheaper estimate that needs no extra forward passes.)
The implicit reward is beta * (log pi - log ref). Reference log-probs are computed once, cached in
`<run.dir>/reference_logps.safetensors` (keyed by a hash of reference model and data), and the
reference model is freed before training: only the policy is in memory while it trains.
"""

from __future__ import annotations

import gc
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save

from orizuru.config import ConfigError, parse_command, save_config
from orizuru.errors import UserError
from orizuru.files import atomic_write, write_json
from orizuru.model.llama import Llama
from orizuru.post.data import PrefData, Unpaired, read_preferences
from orizuru.post.finetune import (
    Batches,
    PostTrain,
    Schedule,
    Seq,
    all_sums,
    answer_seq,
    fit,
    load_base,
    rank_share,
    save_chat_model,
    schedule,
    sequence_logps,
    split_val,
)
from orizuru.runtime import barrier, init_distributed, process_group, setup_device, world_info
from orizuru.train.config import RunConfig
from orizuru.train.loop import Stage, gathered, run_stage

# ---------------------------------------------------------------- the losses


def preference_loss(kind: str, pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float):
    """Per-pair losses and implicit rewards (chosen, rejected) from policy/reference sequence log-probs."""
    h = (pc - rc) - (pr - rr)
    if kind == "dpo":
        losses = -F.logsigmoid(beta * h)
    elif kind == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif kind == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown paired preference loss {kind!r}")
    return losses, beta * (pc - rc).detach(), beta * (pr - rr).detach()


def kto_loss(policy: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor, beta: float, w_desirable: float = 1.0, w_undesirable: float = 1.0):
    """Per-example KTO losses, implicit rewards and the reference point z."""
    r = policy - ref
    z = r.detach().mean().clamp(min=0)
    losses = torch.where(desirable, w_desirable * (1 - torch.sigmoid(beta * (r - z))), w_undesirable * (1 - torch.sigmoid(beta * (z - r))))
    return losses, beta * r.detach(), z


# ---------------------------------------------------------------- config


@dataclass
class Objective:
    loss: Literal["dpo", "ipo", "hinge", "kto"] = "dpo"
    beta: float = 0.1
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0

    def validate(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"config key 'dpo.beta' must be positive, got {self.beta}")


@dataclass
class DPOTrain(PostTrain):
    lr: float = 5e-7  # as Zephyr's DPO stage
    batch_size: int = 4


@dataclass
class DPOConfig:
    model: str = "runs/sft/model"  # the policy to start from (usually the SFT model)
    reference: str | None = None  # reference model; None: the starting policy
    data: PrefData = field(default_factory=PrefData)
    dpo: Objective = field(default_factory=Objective)
    train: DPOTrain = field(default_factory=DPOTrain)
    schedule: Schedule = field(default_factory=lambda: Schedule(epochs=1, warmup_ratio=0.1))
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/dpo"))


# ---------------------------------------------------------------- reference log-probs


def reference_logps(cfg: DPOConfig, seqs: list[Seq], pad_id: int, device, batch_size: int) -> torch.Tensor:
    """log ref(y|x) for every sequence, from the cache when it matches the reference model and data."""
    ref_dir = Path(cfg.reference or cfg.model)
    h = hashlib.sha256()
    for f in sorted(ref_dir.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    for s in seqs:
        h.update(json.dumps([s.ids, s.mask]).encode())
    key = h.hexdigest()
    path = Path(cfg.run.dir) / "reference_logps.safetensors"
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            if f.metadata().get("key") == key:
                return f.get_tensor("logps")
    ref, _ = load_base(ref_dir, device)
    ref.eval()
    rank, world = world_info()
    logps = torch.zeros(len(seqs), dtype=torch.float64, device=device)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))  # similar lengths: little padding
    with torch.no_grad():
        for b in range(rank * batch_size, len(order), batch_size * world):  # each rank its batches
            idx = order[b : b + batch_size]
            logps[idx] = sequence_logps(ref, [seqs[i] for i in idx], pad_id, device).double()
    del ref
    gc.collect()
    if dist.is_initialized():
        dist.all_reduce(logps)
    logps = logps.float().cpu()
    if rank == 0:
        with atomic_write(path, "wb") as f:
            f.write(save({"logps": logps}, metadata={"key": key}))
    barrier()
    return logps


# ---------------------------------------------------------------- the stage


def dpo(cfg: DPOConfig) -> dict:
    rank, world = init_distributed()
    device, amp = setup_device(cfg.train.dtype, cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    d, o = cfg.data, cfg.dpo
    pairs, singles, report = read_preferences(d.train, d.strict)
    kto = o.loss == "kto"
    if not kto and singles:
        raise UserError(f"{', '.join(d.train)}: {len(singles)} unpaired rows ({{completion, label}}) need dpo.loss = 'kto'")
    if kto:  # paired data splits into desirable (chosen) and undesirable (rejected) examples
        singles += [Unpaired(p.prompt, p.chosen, True) for p in pairs] + [Unpaired(p.prompt, p.rejected, False) for p in pairs]
    items = singles if kto else pairs
    if not items:
        raise UserError(f"{', '.join(d.train)}: no usable preference rows ({report.rows} read, {report.skipped} skipped)")
    if d.val:
        vp, vs, _ = read_preferences(d.val, d.strict)
        val_items = (vs + [Unpaired(p.prompt, p.chosen, True) for p in vp] + [Unpaired(p.prompt, p.rejected, False) for p in vp]) if kto else vp
        train_items = items
    else:
        train_items, val_items = split_val(items, d.val_fraction, cfg.train.seed)

    model, tok = load_base(cfg.model, device)
    max_len = cfg.train.seq_len + 1
    counts = {"rows": report.rows, "skipped": report.skipped}

    def encode(xs, what):
        """Items -> groups of sequences ([chosen, rejected], or [completion] for KTO) that fit the context."""
        groups, labels, truncated, dropped = [], [], 0, 0
        for n, x in enumerate(xs):
            answers = [x.completion] if kto else [x.chosen, x.rejected]
            kept, t, dr = fit([answer_seq(tok, x.prompt, a) for a in answers], max_len, d.overlong, f"{what} {n}, answer")
            truncated += t
            if dr:  # the prompt alone fills the context
                dropped += 1
                continue
            groups.append(kept)
            labels.append(x.desirable if kto else None)
        return groups, labels, truncated, dropped

    train, train_labels, counts["truncated"], counts["dropped_too_long"] = encode(train_items, "training example")
    val, val_labels, _, _ = encode(val_items, "validation example")
    if not train:
        raise UserError("no preference example fits train.seq_len; raise it or shorten the data")
    counts.update(train=len(train), val=len(val))
    run_dir = Path(cfg.run.dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    flat = [s for group in train + val for s in group]
    ref_all = reference_logps(cfg, flat, tok.pad_id, device, max(16, cfg.train.batch_size * 2))
    width = len(train[0])
    ref_train = ref_all[: len(train) * width].view(len(train), width)
    ref_val = ref_all[len(train) * width :].view(len(val), width)
    B = cfg.train.batch_size
    batches = Batches([sum(len(s.ids) for s in g) for g in train], B * world, cfg.train.seed)
    schedule(cfg.train, cfg.schedule.epochs, cfg.schedule.warmup_ratio, batches.per_epoch)
    if rank == 0:
        save_config(cfg, run_dir / "config.toml")
        print(f"orizuru dpo ({o.loss}): {json.dumps(counts)}; {cfg.train.max_steps} steps, {world} process(es)", file=sys.stderr)

    def losses(model, b):
        """(loss sum, examples, metric sums) of one batch; a stand-in batch (live False) weighs nothing."""
        groups, refs, labels, live = b
        seqs = [s for g in groups for s in g]
        logps = sequence_logps(model, seqs, tok.pad_id, device).view(len(groups), width)
        refs = refs.to(device)
        w = float(live)
        n = len(groups) * w
        if kto:
            desirable = torch.tensor(labels, device=device)
            loss, rewards, z = kto_loss(logps[:, 0], refs[:, 0], desirable, o.beta, o.kto_desirable_weight, o.kto_undesirable_weight)
            d = desirable.double() * w
            u = (~desirable).double() * w
            return loss.sum() * w, n, {
                "kl_ref_point": z.detach() * n,
                "rewards_desirable": ((rewards * d).sum(), d.sum()),
                "rewards_undesirable": ((rewards * u).sum(), u.sum()),
            }
        loss, rc, rr = preference_loss(o.loss, logps[:, 0], logps[:, 1], refs[:, 0], refs[:, 1], o.beta)
        return loss.sum() * w, n, {
            "reward_accuracy": (rc > rr).float().sum() * w,
            "rewards_chosen": rc.sum() * w,
            "rewards_rejected": rr.sum() * w,
            "margin": (rc - rr).sum() * w,
        }

    def batch(step: int, m: int):
        idx, live = rank_share(batches(step * cfg.train.grad_accum + m), rank, world)
        return [train[i] for i in idx], ref_train[idx], [train_labels[i] for i in idx], live

    def loss(model, b):
        loss_sum, n, metrics = losses(model, b)
        tokens = sum(len(s.ids) for g in b[0] for s in g) if b[3] else 0
        return loss_sum, n, {**metrics, "tokens": tokens}

    def evaluate(model) -> dict:
        if not val:
            return {}
        sums = {}
        for start in range(0, len(val), B * world):
            idx, live = rank_share(list(range(start, min(start + B * world, len(val)))), rank, world)
            loss_sum, n, metrics = losses(model, ([val[i] for i in idx], ref_val[idx], [val_labels[i] for i in idx], live))
            for k, v in {"loss": (loss_sum, n), **metrics}.items():
                s_, c = v if isinstance(v, tuple) else (v, n)
                sums[k] = sums.get(k, 0.0) + float(s_)
                sums[k + "/n"] = sums.get(k + "/n", 0.0) + float(c)
        total = all_sums(sums, device)
        return {k: v / total[k + "/n"] for k, v in total.items() if not k.endswith("/n") and total[k + "/n"] > 0}

    model.eval()
    with torch.no_grad():
        before = {f"val_{k}": round(v, 6) for k, v in evaluate(model).items()}
    trained = run_stage(Stage("dpo", batch, loss, evaluate), model, cfg.train, run_dir, device, amp)
    final = gathered(trained.model, lambda: Llama(model.cfg))
    after = {k: v for k, v in trained.last.items() if k.startswith("val_")}
    summary = {"loss": o.loss, "beta": o.beta, "step": cfg.train.max_steps, **counts, "before": before, "after": after}
    if rank == 0:
        save_chat_model(final, run_dir / "model", tok)
        write_json(run_dir / "summary.json", summary)
    barrier()
    return summary


def main(argv: list[str]) -> int:
    cfg = parse_command(DPOConfig, argv, "orizuru dpo", __doc__.split("\n\n")[0], aliases={"strict": "data.strict"})
    with process_group():
        summary = dpo(cfg)
        if world_info()[0] == 0:
            print(json.dumps(summary, ensure_ascii=False))
    return 0
