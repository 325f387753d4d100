"""The pre-training config: model, optimisation and data sections, and the run directory.

`TrainConfig` and `RunConfig` are also the base of the post-training stages' sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from orizuru.config import ConfigError
from orizuru.model.config import ModelConfig


@dataclass
class TrainConfig:
    seq_len: int = 256
    batch_size: int = 8  # sequences per step per process (per micro-step)
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    max_steps: int = 1000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 1337
    dtype: Literal["auto", "float32", "bfloat16", "native"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU; native: bf16 also on a bf16 CPU
    device: str = "auto"  # auto|cpu|cuda|cuda:N (under torchrun, cuda is LOCAL_RANK's GPU)
    compile: bool = False
    activation_checkpointing: bool = False
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    ckpt_every: int = 100
    ckpt_async: bool = False  # write checkpoints in a background thread while training goes on
    init_from: str | None = None  # HF Llama directory for continued pre-training
    fsdp: bool = False  # shard with FSDP2 under torchrun instead of DDP
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: torch.optim.Muon on hidden matrices, AdamW on embeddings/head/norms
    muon_lr_scale: float = 1.0  # Muon's learning rate = lr x this (its update is already scaled to AdamW's RMS)
    muon_momentum: float = 0.95  # Muon's Nesterov momentum
    schedule: Literal["cosine", "wsd"] = "cosine"  # wsd: warm-up, constant, linear decay over the last decay_frac
    decay_frac: float = 0.2  # wsd: fraction of max_steps spent decaying to min_lr_ratio * lr
    z_loss: float = 0.0  # weight of PaLM's z-loss, mean(logsumexp(logits)^2), added to the training loss
    doc_mask: bool = False  # attend only within each packed document (documents start at BOS), positions restart
    select_ref: str = ""  # Rho-1: HF Llama dir of a reference model (same tokenizer); train only on the tokens of highest excess loss
    select_ratio: float = 0.6  # Rho-1: share of each micro-batch's targets trained on (top by model loss - reference loss)

    def validate(self) -> None:
        for key in ("seq_len", "batch_size", "grad_accum", "max_steps", "log_every", "eval_every", "ckpt_every", "eval_batches"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"config key 'train.{key}' must be positive, got {getattr(self, key)}")
        if self.warmup_steps < 0:
            raise ConfigError(f"config key 'train.warmup_steps' must be >= 0, got {self.warmup_steps}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"config key 'train.lr' must be in (0, 1), got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"config key 'train.min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("config keys 'train.weight_decay' and 'train.grad_clip' must be >= 0")
        if not 0 < self.decay_frac <= 1:
            raise ConfigError(f"config key 'train.decay_frac' must be in (0, 1], got {self.decay_frac}")
        if self.z_loss < 0 or self.muon_lr_scale <= 0:
            raise ConfigError("config key 'train.z_loss' must be >= 0 and 'train.muon_lr_scale' > 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("config keys 'train.beta1' and 'train.beta2' must be in [0, 1)")
        if not 0 < self.select_ratio <= 1:
            raise ConfigError(f"config key 'train.select_ratio' must be in (0, 1], got {self.select_ratio}")


@dataclass
class DataConfig:
    """Token shard directories (written by `orizuru tokenize`) mixed with the given weights."""

    dirs: list[str] = field(default_factory=list)
    weights: list[float] | None = None  # None: equal weights

    def validate(self) -> None:
        if self.weights is not None:
            if len(self.weights) != len(self.dirs):
                raise ConfigError(
                    f"config key 'data.weights' has {len(self.weights)} entries but 'data.dirs' has {len(self.dirs)}"
                )
            if any(w <= 0 for w in self.weights):
                raise ConfigError(f"config key 'data.weights' must all be positive, got {self.weights}")


@dataclass
class RunConfig:
    dir: str = "runs/pretrain"


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        if self.train.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"config key 'train.seq_len' ({self.train.seq_len}) exceeds 'model.max_seq_len' ({self.model.max_seq_len})"
            )
