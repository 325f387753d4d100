"""Files shipped inside the package: sample data, evaluation sets, word lists and example configs.

Found through `importlib.resources`, so they resolve the same from a checkout, an editable install
or an installed wheel. `orizuru/data/` holds the licensed data sets (each folder's SOURCES.md names
its source and license); `orizuru/configs/` the example configs.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped(*parts: str) -> Path:
    """The path of a shipped file or folder, e.g. `shipped("data", "sample", "wiki.jsonl")`."""
    return Path(str(files("orizuru").joinpath(*parts)))


DATA = shipped("data")
CONFIGS = shipped("configs")


def shipped_config(name: str | Path) -> Path | None:
    """A shipped config named like `sft.toml`, `configs/sft.toml` or `scaling/cpu-tiny.toml`, if there is one."""
    parts = Path(name).parts
    if parts[:1] == ("configs",):
        parts = parts[1:]
    path = CONFIGS.joinpath(*parts) if parts else None
    return path if path is not None and path.is_file() else None
