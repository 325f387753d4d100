"""What the report card records about the machine and each stage: environment, wall time, peak
memory, GPU energy measured through NVML (NVIDIA only), and the LLaMA §6 cost and carbon estimate."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

import torch

import orizuru
from orizuru.scaling.plan import GPUS


def _git(*args: str) -> str | None:
    root = Path(orizuru.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def environment() -> dict:
    """Git commit and dirty flag of the orizuru checkout (None when installed from a wheel), versions, hardware."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "git_commit": commit,
        "git_dirty": bool(status) if commit else None,
        "orizuru": orizuru.__version__,
        "torch": torch.__version__,
        "transformers": _version("transformers"),  # not a dependency of orizuru: None when absent
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": gpus[0] if gpus else None,
        "gpu_count": len(gpus),
        "memory_gb": _memory_gb(),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


class Meter:
    """Wall time, peak memory and (on NVIDIA GPUs) the energy the GPUs drew while one stage ran."""

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.handles = []
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            try:
                import pynvml  # nvidia-ml-py (the `pipeline` extra)

                pynvml.nvmlInit()
                self.nvml = pynvml
                self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            except Exception:  # noqa: BLE001 - no nvidia-ml-py or no NVML driver: energy is then "not measured"
                self.handles = []
        self.energy0 = self._energy_mj()
        self.t0 = time.time()

    def _energy_mj(self) -> float | None:
        if not self.handles:
            return None
        try:
            return float(sum(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles))
        except Exception:  # noqa: BLE001 - GPUs without an energy counter (pre-Volta) report "not supported"
            return None

    def stop(self) -> dict:
        wall = time.time() - self.t0
        energy = self._energy_mj()
        out = {"wall_s": round(wall, 3), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        if self.cuda:
            out["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            out["gpus"] = torch.cuda.device_count()
        if energy is not None and self.energy0 is not None:
            out["gpu_energy_kwh"] = (energy - self.energy0) / 3.6e9  # mJ -> kWh
        return out


def cost(stages: list[dict], cfg, env: dict) -> dict:
    """GPU-hours x board power x PUE -> kWh and tCO2eq (LLaMA §6), plus the NVML figure where measured."""
    gpu_hours = sum(s.get("wall_s", 0) * s.get("gpus", 0) for s in stages) / 3600
    name = cfg.gpu or _gpu_key(env.get("gpu"))
    out: dict = {"gpu": name, "gpu_hours": round(gpu_hours, 6), "pue": cfg.pue, "carbon_intensity_t_per_mwh": cfg.carbon_intensity}
    if gpu_hours and name in GPUS:
        kwh = gpu_hours * GPUS[name][1] * cfg.pue / 1000
        out.update(estimated_kwh=kwh, estimated_tco2eq=kwh / 1000 * cfg.carbon_intensity, board_power_w=GPUS[name][1])
    if cfg.price_per_gpu_hour is not None and gpu_hours:
        out["price"] = gpu_hours * cfg.price_per_gpu_hour
    measured = [s["gpu_energy_kwh"] for s in stages if "gpu_energy_kwh" in s]
    if measured:
        kwh = sum(measured) * cfg.pue
        out.update(measured_kwh=kwh, measured_tco2eq=kwh / 1000 * cfg.carbon_intensity, energy="measured (NVML)")
    else:
        out["energy"] = "not measured (no NVIDIA GPU)" if not env.get("gpu_count") else "not measured (no NVML energy counter)"
    return out


def _gpu_key(name: str | None) -> str | None:
    """'NVIDIA H100 80GB HBM3' -> 'h100' (the plan table's key), if it is there."""
    if not name:
        return None
    return next((k for k in GPUS if k in name.lower()), None)
