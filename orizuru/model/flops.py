"""Model FLOPs utilisation: the share of the accelerator's peak that training actually uses.

MFU = (model FLOPs per token x tokens per second) / peak FLOP/s, with the model FLOPs from
`Llama.flops_per_token` (6N + attention, PaLM appendix B) and the peak of dense bf16 matrix
math from the vendor's data sheet. Recomputed activations are not counted (that is HFU).
"""

from __future__ import annotations

# dense (no sparsity) bf16 tensor-core peak, FLOP/s, per GPU
PEAK_BF16_FLOPS = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
}


def peak_flops(device_name: str) -> float | None:
    """Peak bf16 FLOP/s for a `torch.cuda.get_device_name()` string, or None when unknown.

    An H100 without "PCIe" or "NVL" in its name is the SXM part (e.g. "NVIDIA H100 80GB HBM3").
    """
    name = device_name.upper()
    if "GH200" in name:
        return PEAK_BF16_FLOPS["GH200"]
    if "H200" in name:
        return PEAK_BF16_FLOPS["H200"]
    if "H100" in name:
        if "PCIE" in name:
            return PEAK_BF16_FLOPS["H100 PCIe"]
        return PEAK_BF16_FLOPS["H100 NVL" if "NVL" in name else "H100 SXM"]
    for key in ("A100", "L40S"):
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak: float, n_gpus: int = 1) -> float:
    """Fraction of peak (0..1): achieved model FLOP/s over the peak of all `n_gpus` together."""
    if peak <= 0 or n_gpus <= 0:
        raise ValueError("peak FLOP/s and n_gpus must be positive")
    return flops_per_token * tokens_per_s / (peak * n_gpus)
