"""`orizuru plan`: turn a compute budget into a model size, a token count, a config and a bill.

Compute accounting: C = D * (6 N + attention), where N counts all parameters (Chinchilla's
convention) and the attention term 12 * layers * dim * seq_len per token (score and value
products, PaLM appendix B) comes from the depth dial below, taken as continuous so every
quantity is a smooth function of N. The loss law is Chinchilla's L(N, D) = E + A/N^a + B/D^b;
the default constants are the refit of Besiroglu et al. 2024 (arXiv 2404.10102, Table 1),
which agrees with Chinchilla's ~20 tokens per parameter; `--law hoffmann` uses the original
paper's Approach-3 values; `--fit FILE` uses a law fitted by `orizuru scaling fit`. The law's
optimum is found numerically on the same accounting, so with `--no-attention` (C = 6ND) it is exactly the
closed form of Hoffmann et al. eq. 4 (tested).

Everything here is plain arithmetic (no torch), so `orizuru plan` answers instantly.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scipy.optimize import brentq, minimize_scalar

from orizuru.config import ConfigError, parse_command, save_config, validate
from orizuru.errors import UserError
from orizuru.model.config import ModelConfig
from orizuru.model.flops import count_params
from orizuru.report import table
from orizuru.train.config import DataConfig, PretrainConfig, RunConfig, TrainConfig


@dataclass(frozen=True)
class Law:
    """L(N, D) = E + A / N^alpha + B / D^beta (nats per token)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "custom"

    def loss(self, n: float, d: float) -> float:
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def optimum_6nd(self, compute: float) -> tuple[float, float]:
        """Closed-form argmin of L on C = 6 N D (Hoffmann et al. eq. 4): (N*, D*)."""
        a, b = self.alpha, self.beta
        g = (a * self.A / (b * self.B)) ** (1 / (a + b))
        n = g * (compute / 6) ** (b / (a + b))
        return n, compute / (6 * n)


LAWS = {
    # Besiroglu, Erdil, Barnett, You 2024, "Chinchilla Scaling: A Replication Attempt", Table 1.
    "besiroglu": Law(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658, name="besiroglu"),
    # Hoffmann et al. 2022, Approach 3 as in the paper's TeX source (the body prints them rounded
    # to 1.69/0.34/0.28, which the replication shows biases predictions).
    "hoffmann": Law(E=1.6934, A=406.4, B=410.7, alpha=0.3392, beta=0.2849, name="hoffmann"),
}

# Kaplan et al. 2020 (N without embeddings, C in PF-days; WebText2 + GPT-2 BPE, so comparable
# only in shape, not in absolute value, to a loss on another corpus and tokenizer).
KAPLAN = {"alpha_N": 0.076, "N_c": 8.8e13, "alpha_D": 0.095, "D_c": 5.4e13, "alpha_C": 0.050, "C_c": 3.1e8}
PF_DAY = 1e15 * 86400

# Muennighoff et al. 2023: repeated tokens lose value with decay constant R_D* (in epochs).
R_D_STAR = 15.4

# Dense bf16 tensor-core peak FLOP/s and board power (W) per GPU.
GPUS = {
    "v100": (125e12, 300),
    "a100": (312e12, 400),
    "l4": (121e12, 72),
    "h100": (989e12, 700),
    "h200": (989e12, 700),
    "b200": (2250e12, 1000),
}
PUE = 1.1  # LLaMA §6
COMPUTE_RANGE = (1e6, 1e40)  # training FLOPs searched for the budget where a size (or token count) is optimal
TCO2_PER_MWH = 0.385  # LLaMA §6 (US national average carbon intensity)


# ---------------------------------------------------------------- sizing: one dial (depth)


@dataclass(frozen=True)
class Sizing:
    """How a parameter count becomes an architecture: dim = aspect * depth, fixed head_dim."""

    vocab_size: int = 32000
    seq_len: int = 2048
    aspect: int = 64
    head_dim: int = 64
    kv_groups: int = 1  # query heads per key/value head (GQA); 1 = plain multi-head attention
    tie_embeddings: bool = False
    attention: bool = True  # False: C = 6 N D exactly, the convention the published laws were fitted under

    def model(self, depth: int) -> ModelConfig:
        dim = max(self.head_dim, round(self.aspect * depth / self.head_dim) * self.head_dim)
        heads = dim // self.head_dim
        kv = max(1, heads // self.kv_groups)
        while heads % kv:
            kv -= 1
        cfg = ModelConfig(
            dim=dim, n_layers=depth, n_heads=heads, n_kv_heads=kv, vocab_size=self.vocab_size,
            max_seq_len=self.seq_len, head_dim=self.head_dim, tie_embeddings=self.tie_embeddings,
        )
        validate(cfg)
        return cfg

    def params_continuous(self, depth: float) -> float:
        """12 d^2 per layer (4 d^2 attention + 8 d^2 SwiGLU) plus embeddings, d = aspect * depth."""
        d = self.aspect * depth
        return 12 * d * d * depth + (1 if self.tie_embeddings else 2) * self.vocab_size * d

    def depth_for(self, n: float) -> float:
        hi = 1.0
        while self.params_continuous(hi) < n:
            hi *= 2
        return brentq(lambda depth: self.params_continuous(depth) - n, 0.0, hi)

    def attention_flops(self, n: float) -> float:
        """Training FLOPs per token of the attention scores/values: 12 * layers * dim * seq_len."""
        if not self.attention:
            return 0.0
        depth = self.depth_for(n)
        return 12 * depth * self.aspect * depth * self.seq_len

    def flops_per_token(self, n: float) -> float:
        return 6 * n + self.attention_flops(n)

    def closest_model(self, n: float) -> ModelConfig:
        """The integer depth whose exact parameter count is closest to n (in log)."""
        best, err = None, math.inf
        for depth in range(1, 257):
            cfg = self.model(depth)
            total = count_params(cfg).total
            e = abs(math.log(total / n))
            if e < err:
                best, err = cfg, e
            elif total > n:
                break
        return best


# ---------------------------------------------------------------- the arithmetic


def _argmin_log(f, lo: float, hi: float) -> float:
    """Minimise a unimodal f over [lo, hi] in log space (Brent's bounded method): the range spans decades."""
    r = minimize_scalar(lambda x: f(math.exp(x)), bounds=(math.log(lo), math.log(hi)), method="bounded",
                        options={"xatol": 1e-10})
    return math.exp(r.x)


def tokens_for(compute: float, n: float, sizing: Sizing) -> float:
    return compute / sizing.flops_per_token(n)


def compute_for(n: float, d: float, sizing: Sizing) -> float:
    return d * sizing.flops_per_token(n)


def params_for(compute: float, d: float, sizing: Sizing) -> float:
    """Solve C = D * (6 N + attention(N)) for N (monotone in N; at N = C / 3D, 6N alone is twice C / D)."""
    per_token = compute / d
    if sizing.flops_per_token(1.0) >= per_token:
        raise UserError(f"compute {compute:.3g} FLOPs is too small to train any model on {d:.3g} tokens")
    return math.exp(brentq(lambda x: sizing.flops_per_token(math.exp(x)) - per_token, 0.0, math.log(per_token / 3)))


def optimal(compute: float, law: Law, sizing: Sizing, unique_tokens: float | None = None) -> tuple[float, float]:
    """(N, D) minimising the law at fixed compute; with unique_tokens, D counts repeats at a discount."""

    def loss(n):
        d = tokens_for(compute, n, sizing)
        return law.loss(n, effective_tokens(d, unique_tokens) if unique_tokens else d)

    hi = compute / 6 / 1.0  # at least one token
    n = _argmin_log(loss, min(1e3, hi / 10), hi)
    return n, tokens_for(compute, n, sizing)


def compute_where_optimal(target: float, which: str, law: Law, sizing: Sizing) -> float:
    """The budget C at which the optimal N (which='params') or D ('tokens') equals `target`."""

    def excess(log_c):  # ln(optimal / target), increasing in C
        n, d = optimal(math.exp(log_c), law, sizing)
        return math.log((n if which == "params" else d) / target)

    lo, hi = math.log(COMPUTE_RANGE[0]), math.log(COMPUTE_RANGE[1])
    if not excess(lo) < 0 < excess(hi):
        raise UserError(f"--{which} {target:.3g} is not the optimum of any budget from {COMPUTE_RANGE[0]:.0e} to "
                        f"{COMPUTE_RANGE[1]:.0e} FLOPs (law {law.name})")
    return math.exp(brentq(excess, lo, hi))


def effective_tokens(d: float, unique: float, r_star: float = R_D_STAR) -> float:
    """Muennighoff et al. eq. 5: D' = U + U R* (1 - exp(-R / R*)), R = D / U - 1 repetitions."""
    if d <= unique:
        return d
    r = d / unique - 1
    return unique + unique * r_star * (1 - math.exp(-r / r_star))


def kaplan(n_non_embedding: float, d: float, compute: float) -> dict:
    k = KAPLAN
    return {
        "loss_N": (k["N_c"] / n_non_embedding) ** k["alpha_N"],
        "loss_D": (k["D_c"] / d) ** k["alpha_D"],
        "loss_C": (k["C_c"] / (compute / PF_DAY)) ** k["alpha_C"],
    }


def smallest_model_for_loss(target: float, law: Law, tokens: float) -> float:
    """Smallest N that reaches `target` with `tokens` tokens (LLaMA: train small models longer)."""
    slack = target - law.E - law.B / tokens**law.beta
    if slack <= 0:
        raise UserError(
            f"target loss {target} is out of reach with {tokens:.3g} tokens: even an infinite model gets "
            f"{law.E + law.B / tokens**law.beta:.4f} (law {law.name})"
        )
    return (law.A / slack) ** (1 / law.alpha)


def inference_aware(target: float, law: Law, sizing: Sizing, inference_tokens: float) -> dict:
    """Cheapest (training + 2 N per served token) way to reach `target`, and smaller alternatives."""
    if target <= law.E:
        raise UserError(f"--target-loss {target} is not above the irreducible loss E = {law.E} of law {law.name}")
    n_min = (law.A / (target - law.E)) ** (1 / law.alpha)  # needs infinite data

    def tokens(n):
        return (law.B / (target - law.E - law.A / n**law.alpha)) ** (1 / law.beta)

    def total(n):
        return compute_for(n, tokens(n), sizing) + 2 * n * inference_tokens

    n_train = _argmin_log(lambda n: compute_for(n, tokens(n), sizing), n_min * 1.0001, n_min * 1e6)
    n_best = _argmin_log(total, n_min * 1.0001, n_min * 1e6) if inference_tokens else n_train
    c_train = compute_for(n_train, tokens(n_train), sizing)
    rows = []
    for k in (1, 0.75, 0.5, 0.35, 0.25):
        n = n_train * k
        if n > n_min * 1.0001:
            c = compute_for(n, tokens(n), sizing)
            rows.append({"params": n, "tokens": tokens(n), "flops": c, "training_overhead": c / c_train})
    return {
        "target_loss": target, "inference_tokens": inference_tokens, "asymptotic_min_params": n_min,
        "compute_optimal": {"params": n_train, "tokens": tokens(n_train), "flops": c_train},
        "params": n_best, "tokens": tokens(n_best), "smaller_models": rows,
    }


@dataclass(frozen=True)
class LrRule:
    """Peak learning rate = coef * C^-compute_exp * width^-width_exp, at most cap."""

    coef: float
    compute_exp: float = 0.0
    width_exp: float = 0.0
    cap: float = math.inf


LR_RULES = {
    # DeepSeek LLM (2024) eq. 1, AdamW, fitted on 1e17-3e20 FLOPs; capped at 0.02 below their range.
    "deepseek": LrRule(coef=0.3118, compute_exp=0.125, cap=0.02),
    # Muon + AdamW (RMS-matched), WSD: the CPU sweep's recipe, fitted by bench/scaling_lr.py on
    # 500-step runs of depths 1-7 (widths 16-112) of configs/scaling/cpu-tiny.toml. It has no run-length
    # term: in that sweep's longer runs one lr of 8e-3 beat it (docs/recipe-log.md)
    "muon-cpu": LrRule(coef=0.297, width_exp=0.835),
}


def peak_lr(rule: str, compute: float, width: int) -> float:
    """The learning rate a named rule (`LR_RULES`) gives a model `width` wide trained on `compute` FLOPs:
    what `orizuru plan` writes into its config and `[sweep] lr_rule` gives each run of a sweep."""
    r = LR_RULES[rule]
    return min(r.coef * compute**-r.compute_exp * width**-r.width_exp, r.cap)


def train_settings(compute: float, tokens: float, seq_len: int, micro_batch: int) -> dict:
    """Batch and peak LR from DeepSeek LLM's fits (2024, eq. 1): B = 0.292 C^0.3271 tokens,
    lr = 0.3118 C^-0.125 (`peak_lr("deepseek", ...)`); steps cover the planned tokens."""
    batch_tokens = 0.2920 * compute**0.3271
    seqs = max(1, round(batch_tokens / seq_len))
    micro = min(seqs, micro_batch)
    accum = -(-seqs // micro)
    per_step = micro * accum * seq_len
    steps = max(1, math.ceil(tokens / per_step))
    lr = peak_lr("deepseek", compute, width=1)  # no width term
    return {
        "seq_len": seq_len, "batch_size": micro, "grad_accum": accum, "batch_tokens": per_step,
        "steps": steps, "lr": lr, "warmup_steps": max(1, min(2000, steps // 20)),
    }


def cost(compute: float, mfu: float, gpus: int) -> list[dict]:
    rows = []
    for name, (peak, watts) in GPUS.items():
        gpu_hours = compute / (peak * mfu) / 3600
        mwh = gpu_hours * watts * PUE / 1e6
        rows.append({
            "gpu": name, "gpu_hours": gpu_hours, "wall_hours": gpu_hours / gpus,
            "energy_mwh": mwh, "tco2eq": mwh * TCO2_PER_MWH,
        })
    return rows


# ---------------------------------------------------------------- the plan


def load_law(name: str, fit_file: str | None) -> Law:
    if fit_file is None:
        return LAWS[name]
    try:
        fit = json.loads(Path(fit_file).read_text(encoding="utf-8"))
        p = fit["approach3"]["params"]
        if fit["approach3"].get("status") != "ok":
            print(f"orizuru plan: warning: the fit in {fit_file} is {fit['approach3']['status']}: "
                  f"{fit['approach3'].get('reason', '')}", file=sys.stderr)
        return Law(E=p["E"], A=p["A"], B=p["B"], alpha=p["alpha"], beta=p["beta"], name=str(fit_file))
    except FileNotFoundError:
        raise UserError(f"--fit: file not found: {fit_file}") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(
            f"--fit {fit_file}: not a usable fit (expected the JSON of `orizuru scaling fit` with approach3.params)"
        ) from None


def make_plan(
    *, compute: float | None = None, params: float | None = None, tokens: float | None = None,
    law: Law = LAWS["besiroglu"], sizing: Sizing = Sizing(), unique_tokens: float | None = None,
    target_loss: float | None = None, inference_tokens: float = 0.0, mfu: float = 0.4, gpu: str = "h100",
    gpus: int = 1, micro_batch: int = 16,
) -> dict:
    """Resolve the budget (any two of C, N, D give the third; one gives the law's optimum)."""
    for key, v in (("compute", compute), ("params", params), ("tokens", tokens), ("unique-tokens", unique_tokens),
                   ("target-loss", target_loss)):
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise UserError(f"--{key} must be a positive number, got {v}")
    if inference_tokens < 0:
        raise UserError(f"--inference-tokens must be >= 0, got {inference_tokens}")
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu must be in (0, 1], got {mfu}")
    if gpu not in GPUS:
        raise UserError(f"--gpu: unknown GPU '{gpu}' (known: {', '.join(GPUS)})")
    if gpus < 1:
        raise UserError(f"--gpus must be >= 1, got {gpus}")

    plan: dict = {"law": asdict(law), "seq_len": sizing.seq_len, "attention": sizing.attention}
    if target_loss is not None:
        if compute is not None or params is not None:
            raise UserError("--target-loss finds the model size itself: give it without --compute/--gpu-hours/--params")
        if tokens is not None:
            params = smallest_model_for_loss(target_loss, law, tokens)
            plan["inference"] = {"target_loss": target_loss, "token_cap": tokens, "smallest_params": params}
        else:
            inf = inference_aware(target_loss, law, sizing, inference_tokens)
            plan["inference"] = inf
            params, tokens = inf["params"], inf["tokens"]
        compute = compute_for(params, tokens, sizing)
    given = sum(v is not None for v in (compute, params, tokens))
    if given == 0:
        raise UserError("give a budget: --compute, --gpu-hours, --params, --tokens or --target-loss")
    if given == 3:
        implied = compute_for(params, tokens, sizing)
        if abs(implied / compute - 1) > 0.05:
            raise UserError(
                f"--compute {compute:.4g} contradicts --params {params:.4g} and --tokens {tokens:.4g}, which need "
                f"{implied:.4g} FLOPs at seq_len {sizing.seq_len}; give only two of them"
            )
    elif compute is None and params is None:
        compute = compute_where_optimal(tokens, "tokens", law, sizing)
        params, tokens = optimal(compute, law, sizing)
    elif compute is None and tokens is None:
        compute = compute_where_optimal(params, "params", law, sizing)
        params, tokens = optimal(compute, law, sizing)
    elif compute is None:
        compute = compute_for(params, tokens, sizing)
    elif params is None and tokens is None:
        params, tokens = optimal(compute, law, sizing)
    elif tokens is None:
        if sizing.flops_per_token(params) > compute:
            raise UserError(f"--compute {compute:.3g} is less than one token's worth for {params:.3g} parameters")
        tokens = tokens_for(compute, params, sizing)
    else:
        params = params_for(compute, tokens, sizing)

    n_opt, d_opt = optimal(compute, law, sizing)
    model = sizing.closest_model(params)
    counted = count_params(model)
    plan.update({
        "params": params, "tokens": tokens, "flops": compute, "tokens_per_param": tokens / params,
        "predicted_loss": law.loss(params, tokens),
        "optimal": {"params": n_opt, "tokens": d_opt, "predicted_loss": law.loss(n_opt, d_opt)},
        "kaplan": kaplan(max(params - counted.embedding, 1.0), tokens, compute),
        "model": {**{k: getattr(model, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                                                      "ffn_dim", "vocab_size", "tie_embeddings")},
                  "params": counted.total},
        "train": train_settings(compute, tokens, sizing.seq_len, micro_batch),
        "cost": {"gpu": gpu, "gpus": gpus, "mfu": mfu, "table": cost(compute, mfu, gpus)},
    })
    if unique_tokens is not None:
        d_eff = effective_tokens(tokens, unique_tokens)
        n_dc, d_dc = optimal(compute, law, sizing, unique_tokens)
        plan["data_constrained"] = {
            "unique_tokens": unique_tokens, "epochs": tokens / unique_tokens, "effective_tokens": d_eff,
            "predicted_loss": law.loss(params, d_eff),
            "recommended": {"params": n_dc, "tokens": d_dc, "epochs": d_dc / unique_tokens,
                            "predicted_loss": law.loss(n_dc, effective_tokens(d_dc, unique_tokens))},
        }
        plan["predicted_loss"] = law.loss(params, d_eff)
    return plan


def pretrain_config(plan: dict, run_dir: str, data_dirs: list[str]) -> PretrainConfig:
    m, t = plan["model"], plan["train"]
    steps = t["steps"]
    every = max(1, min(1000, steps // 10))
    cfg = PretrainConfig(
        model=ModelConfig(**{k: m[k] for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim",
                                                "vocab_size", "tie_embeddings")}, max_seq_len=t["seq_len"]),
        train=TrainConfig(seq_len=t["seq_len"], batch_size=t["batch_size"], grad_accum=t["grad_accum"],
                          lr=t["lr"], warmup_steps=t["warmup_steps"], max_steps=steps,
                          eval_every=every, ckpt_every=every),
        data=DataConfig(dirs=list(data_dirs)),
        run=RunConfig(dir=run_dir),
    )
    validate(cfg)
    return cfg


def report_section(summary: dict, cfg: PretrainConfig) -> tuple[str, str]:
    """(heading, Markdown) for a run report: where a finished run sits against the compute-optimal
    allocation of its own budget (`summary` is pretrain's summary.json)."""
    sizing = Sizing(vocab_size=cfg.model.vocab_size, seq_len=cfg.train.seq_len,
                    tie_embeddings=cfg.model.tie_embeddings)
    n, d, c = summary["params"], summary["tokens"], summary["flops"]
    n_opt, d_opt = optimal(c, LAWS["besiroglu"], sizing)
    rows = [
        ("training compute", f"{c:.3g} FLOPs"),
        ("tokens per parameter", f"{d / n:.1f} (compute-optimal: {d_opt / n_opt:.1f})"),
        ("compute-optimal size for this budget", f"{_num(n_opt)} parameters on {_num(d_opt)} tokens"),
    ]
    note = ("\n\nBesiroglu et al. 2024's refit of Chinchilla's law; its constants come from English web text "
            "at 70M-16B parameters, so only the allocation, not the loss, carries over. "
            "`orizuru scaling sweep` + `fit` measure your own law.")
    return "Scaling-law check", table(rows) + note


# ---------------------------------------------------------------- output


def _num(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def format_plan(plan: dict) -> str:
    m, t, c = plan["model"], plan["train"], plan["cost"]
    law = plan["law"]
    lines = [
        f"law         L = {law['E']:.4g} + {law['A']:.4g}/N^{law['alpha']:.4g} + {law['B']:.4g}/D^{law['beta']:.4g}"
        f"  ({law['name']})",
        f"compute     {plan['flops']:.3e} FLOPs (6ND{' + attention' if plan['attention'] else ''}, seq_len {plan['seq_len']})",
        f"params      {_num(plan['params'])}    tokens {_num(plan['tokens'])}    "
        f"tokens/param {plan['tokens_per_param']:.1f}",
        f"loss        {plan['predicted_loss']:.4f} predicted",
        f"optimal     {_num(plan['optimal']['params'])} params on {_num(plan['optimal']['tokens'])} tokens -> "
        f"{plan['optimal']['predicted_loss']:.4f} (same compute)",
        f"kaplan      L(N) {plan['kaplan']['loss_N']:.3f}  L(D) {plan['kaplan']['loss_D']:.3f}  "
        f"L(C) {plan['kaplan']['loss_C']:.3f}  (WebText2 units, shape only)",
    ]
    if "data_constrained" in plan:
        dc = plan["data_constrained"]
        r = dc["recommended"]
        lines += [
            f"data        {_num(dc['unique_tokens'])} unique tokens: {dc['epochs']:.2f} epochs = "
            f"{_num(dc['effective_tokens'])} effective tokens (R_D* = {R_D_STAR})",
            f"            recommended: {_num(r['params'])} params, {r['epochs']:.2f} epochs -> "
            f"{r['predicted_loss']:.4f}",
        ]
    if "inference" in plan:
        inf = plan["inference"]
        if "token_cap" in inf:
            lines.append(f"inference   smallest model reaching {inf['target_loss']} on {_num(inf['token_cap'])} "
                         f"tokens: {_num(inf['smallest_params'])}")
        else:
            lines.append(f"inference   target {inf['target_loss']}: needs > {_num(inf['asymptotic_min_params'])} "
                         f"params; compute-optimal {_num(inf['compute_optimal']['params'])}")
            for row in inf["smaller_models"]:
                lines.append(f"            {_num(row['params']):>7} params on {_num(row['tokens']):>7} tokens: "
                             f"{row['training_overhead']:.2f}x training compute, "
                             f"{row['params'] / inf['compute_optimal']['params']:.2f}x inference cost")
    lines += [
        f"model       depth {m['n_layers']}, dim {m['dim']}, heads {m['n_heads']} (kv {m['n_kv_heads']}, "
        f"head_dim {m['head_dim']}), ffn {m['ffn_dim']}, vocab {m['vocab_size']}: {_num(m['params'])} params",
        f"train       {t['steps']} steps x {t['batch_tokens']} tokens (batch {t['batch_size']} x accum "
        f"{t['grad_accum']} x seq {t['seq_len']}), lr {t['lr']:.3g}, warmup {t['warmup_steps']}",
        "",
        f"{'gpu':<6} {'GPU-hours':>12} {'wall (h)':>10} {'MWh':>10} {'tCO2eq':>10}   "
        f"(MFU {c['mfu']}, {c['gpus']} GPUs, PUE {PUE})",
    ]
    for row in c["table"]:
        mark = " <" if row["gpu"] == c["gpu"] else ""
        lines.append(f"{row['gpu']:<6} {row['gpu_hours']:>12.4g} {row['wall_hours']:>10.4g} "
                     f"{row['energy_mwh']:>10.4g} {row['tco2eq']:>10.4g}{mark}")
    return "\n".join(lines)


def parse_count(text: str) -> float:
    """'7B', '1.4T', '3e21', '500M' -> float."""
    s = text.strip().upper()
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}.get(s[-1:], None)
    try:
        return float(s[:-1]) * scale if scale else float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number like 7B, 1.4T or 3e21, got {text!r}") from None


COUNTS = ("compute", "gpu_hours", "params", "tokens", "unique_tokens", "inference_tokens")


@dataclass
class PlanConfig:
    """`orizuru plan`: counts are numbers or like 7B, 1.4T, 3e21."""

    compute: float | str | None = None  # training FLOPs
    gpu_hours: float | str | None = None  # GPU-hours; FLOPs = hours * peak(--gpu) * --mfu
    params: float | str | None = None  # parameters N (all, embeddings included)
    tokens: float | str | None = None  # training tokens D (with --target-loss: the token cap)
    unique_tokens: float | str | None = None  # unique tokens available (data-constrained mode)
    target_loss: float | None = None  # inference-aware mode: the loss to reach
    inference_tokens: float | str = 0.0  # tokens to be served over the model's life (inference-aware mode)
    law: str = "besiroglu"  # published constants of L(N, D): besiroglu or hoffmann
    fit: str | None = None  # use the law fitted by `orizuru scaling fit` (its fit.json) instead
    gpu: str = "h100"  # one of the cost table's GPUs (v100, a100, l4, h100, h200, b200)
    gpus: int = 1  # GPUs in parallel (wall time)
    mfu: float = 0.4  # model FLOPs utilisation
    seq_len: int = 2048
    attention: bool = True  # count attention FLOPs; --no-attention: C = 6ND only (the laws' own convention)
    vocab_size: int = 32000
    kv_groups: int = 1  # query heads per KV head (GQA)
    head_dim: int = 64
    micro_batch: int = 16  # sequences per micro-step
    out: str | None = None  # write a ready PretrainConfig TOML here
    run_dir: str = "runs/plan"  # run.dir in the written config
    data: list[str] = field(default_factory=list)  # token shard dirs for data.dirs in the written config
    json: bool = False  # print the plan as JSON

    def validate(self) -> None:
        """Counts as text (`7B`) become numbers; an unknown law fails here."""
        for key in COUNTS:
            value = getattr(self, key)
            if isinstance(value, str):
                try:
                    setattr(self, key, parse_count(value))
                except argparse.ArgumentTypeError as e:
                    raise ConfigError(f"--{key.replace('_', '-')}: {e}") from None
        if self.law not in LAWS:
            raise ConfigError(f"--law: unknown law '{self.law}' (known: {', '.join(sorted(LAWS))})")


def main(argv: list[str]) -> int:
    args = parse_command(PlanConfig, argv, "orizuru plan", __doc__.split("\n\n")[0])
    for key in ("seq_len", "vocab_size", "kv_groups", "head_dim", "micro_batch"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.head_dim % 2:
        raise UserError(f"--head-dim must be even (RoPE), got {args.head_dim}")
    compute = args.compute
    if args.gpu_hours is not None:
        if compute is not None:
            raise UserError("give --compute or --gpu-hours, not both")
        if args.gpu not in GPUS:
            raise UserError(f"--gpu: unknown GPU '{args.gpu}' (known: {', '.join(GPUS)})")
        if args.gpu_hours <= 0:
            raise UserError(f"--gpu-hours must be positive, got {args.gpu_hours}")
        compute = args.gpu_hours * 3600 * GPUS[args.gpu][0] * args.mfu
    sizing = Sizing(vocab_size=args.vocab_size, seq_len=args.seq_len, head_dim=args.head_dim,
                    aspect=64, kv_groups=args.kv_groups, attention=args.attention)
    plan = make_plan(
        compute=compute, params=args.params, tokens=args.tokens, law=load_law(args.law, args.fit), sizing=sizing,
        unique_tokens=args.unique_tokens, target_loss=args.target_loss, inference_tokens=args.inference_tokens,
        mfu=args.mfu, gpu=args.gpu, gpus=args.gpus, micro_batch=args.micro_batch,
    )
    if args.out:
        save_config(pretrain_config(plan, args.run_dir, args.data), args.out)
        plan["config"] = str(args.out)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    if args.out and not args.json:
        print(f"\nwrote {args.out}")
    return 0
