"""LoRA (Hu et al. 2021): W x + (alpha / r) * B A x with only A (r x in) and B (out x r) trained.

The adapter is saved in the layout `peft` reads (`adapter_config.json` +
`adapter_model.safetensors` with keys `base_model.model.<module>.lora_A.weight`), so
`PeftModel.from_pretrained(LlamaForCausalLM..., dir)` loads it; `merge_lora` folds it into the
base weights for a plain HF Llama directory. B starts at zero, so training starts from the base.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from orizuru.errors import UserError
from orizuru.files import atomic_dir, write_json

PREFIX = "base_model.model."


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a low-rank update; module names match peft's (lora_A, lora_B)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.dropout = nn.Dropout(dropout)
        self.scale = alpha / rank
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # peft's default init
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base_layer.weight += (self.lora_B.weight @ self.lora_A.weight) * self.scale
        return self.base_layer


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: list[str], dropout: float = 0.0) -> list[str]:
    """Wrap every nn.Linear whose name ends with a target (e.g. 'q_proj'); freeze everything else."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in targets]
    found = {n.split(".")[-1] for n in names}
    missing = [t for t in targets if t not in found]
    if missing:
        linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise UserError(f"LoRA target module(s) {missing} not found in the model (linear modules: {', '.join(linear)})")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace each LoRALinear by its base Linear with B A * scale added: a plain model again."""
    for name, module in lora_modules(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def save_adapter(model: nn.Module, directory: str | Path, *, rank: int, alpha: float, targets: list[str], dropout: float, base_model: str) -> None:
    """Write the adapter as peft does: adapter_config.json + adapter_model.safetensors (atomic)."""
    tensors = {}
    for name, m in lora_modules(model).items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.detach().contiguous().cpu()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = m.lora_B.weight.detach().contiguous().cpu()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model),
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
    }
    with atomic_dir(directory) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "adapter_config.json", config)


def load_adapter(model: nn.Module, directory: str | Path) -> None:
    """Apply a saved adapter (ours or peft's) to a plain model, in place."""
    directory = Path(directory)
    try:
        config = json.loads((directory / "adapter_config.json").read_text())
        tensors = load_file(str(directory / "adapter_model.safetensors"))
    except (OSError, ValueError) as e:
        raise UserError(f"{directory}: not a LoRA adapter directory ({e})") from None
    apply_lora(model, config["r"], config["lora_alpha"], list(config["target_modules"]))
    state = {k[len(PREFIX):]: v for k, v in tensors.items()}
    for name, m in lora_modules(model).items():
        m.lora_A.weight.data.copy_(state[f"{name}.lora_A.weight"])
        m.lora_B.weight.data.copy_(state[f"{name}.lora_B.weight"])
