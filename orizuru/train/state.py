"""Training-state checkpoints as `torch.distributed.checkpoint` (DCP) directories.

`<run_dir>/checkpoints/step_N/` holds the model and optimizer state (each rank writes its own
shards: nothing is gathered on one process), the CPU RNG state, and `state.json` (step and the
stage's extras). It is written as `step_N.tmp/` and renamed once every rank has finished, then
named in `latest.txt`: a checkpoint is complete or ignored, so SIGKILL at any moment leaves the
previous one. DCP's state is keyed by parameter name, not by rank, so a checkpoint written by N
processes (DDP or FSDP2) resumes with M. `train.ckpt_async` writes in a background thread while
training goes on; the checkpoint is committed when the next one starts or the run ends.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from orizuru.errors import UserError
from orizuru.files import atomic_write

CKPT_DIR = "checkpoints"
LATEST = "latest.txt"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# a single process needs no process group; DCP warns about that on every save and load
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def _state(model: torch.nn.Module, optimizer) -> dict:
    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optimizer": osd, "rng": torch.get_rng_state()}


class Checkpointer:
    """Saves training state every `ckpt_every` steps (see the module docstring); call on every rank."""

    def __init__(self, run_dir: str | Path, keep: int = 2, asynchronous: bool = False):
        self.root = Path(run_dir) / CKPT_DIR
        self.keep = keep
        self.asynchronous = asynchronous
        self._pending: tuple | None = None  # (future, tmp dir, step, extra) of an async save
        # the background writer's collectives get a gloo group of their own, apart from training's
        self._group = dist.new_group(backend="gloo") if asynchronous and dist.is_initialized() else None

    def save(self, step: int, model: torch.nn.Module, optimizer, extra: dict) -> None:
        self.wait()
        tmp = self.root / f"step_{step:08d}.tmp"
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        state = _state(model, optimizer)
        if self.asynchronous:
            self._pending = (dcp.async_save(state, checkpoint_id=str(tmp), process_group=self._group), tmp, step, extra)
        else:
            dcp.save(state, checkpoint_id=str(tmp))
            self._commit(tmp, step, extra)

    def wait(self) -> None:
        """Finish and commit an asynchronous save in flight."""
        if self._pending is not None:
            future, tmp, step, extra = self._pending
            self._pending = None
            future.result()
            self._commit(tmp, step, extra)

    def _commit(self, tmp: Path, step: int, extra: dict) -> None:
        _barrier()  # every rank's shards are on disk
        if _rank() == 0:
            (tmp / "state.json").write_text(json.dumps({"step": step, **extra}))
            final = tmp.with_suffix("")
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            with atomic_write(self.root / LATEST) as f:
                f.write(final.name)
            done = sorted(p for p in self.root.glob("step_*") if p.is_dir() and p.suffix != ".tmp")
            for old in done[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, optimizer, extra: dict, keep: int = 2) -> None:
    """One synchronous checkpoint (see Checkpointer); call on every rank."""
    Checkpointer(run_dir, keep).save(step, model, optimizer, extra)


def load_checkpoint(run_dir: str | Path, model: torch.nn.Module, optimizer) -> tuple[int, dict] | None:
    """Restore the latest complete checkpoint into `model`/`optimizer` (any world size); (step, extra) or None.

    `model` is the unwrapped module (FSDP2 shards it in place); call on every rank.
    """
    root = Path(run_dir) / CKPT_DIR
    latest = root / LATEST
    if not latest.is_file():
        return None
    path = root / latest.read_text().strip()
    try:
        info = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: training checkpoint is unreadable ({e}); delete it to start over") from None
    state = _state(model, optimizer)
    try:
        dcp.load(state, checkpoint_id=str(path))
    except Exception as e:  # DCP reports missing or mismatched keys as CheckpointException / RuntimeError
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: checkpoint does not match the configured model or is unreadable ({first}); delete it to start over") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    torch.set_rng_state(state["rng"])
    step = info.pop("step")
    return step, info
