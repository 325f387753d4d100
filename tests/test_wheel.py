"""The package as a user installs it: a wheel in a fresh virtual environment, run from a folder
outside the checkout, finds its shipped files (task definitions, eval sets, configs) by itself."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from eval_helpers import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding the orizuru wheel; its dependencies come from this environment
    through a .pth file, so nothing is downloaded."""
    work = tmp_path_factory.mktemp("wheel")
    # built from a copy: a stale build/ in the checkout would hide a file missing from the package data
    src = shutil.copytree(ROOT, work / "src", ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "runs", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work), str(src)],
                   check=True, cwd=work)
    (wheel,) = work.glob("orizuru-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    ours = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (purelib / "outer_deps.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    return venv / "bin"


def run(bin_dir: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_wheel_ships_the_data_and_configs(installed):
    (wheel,) = installed.parent.parent.glob("orizuru-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("orizuru/eval/tasks/jcommonsenseqa.toml", "orizuru/data/eval/jcommonsenseqa/valid.jsonl",
                   "orizuru/data/joyo_kanji/joyo.txt", "orizuru/corpus/ng_words.txt", "orizuru/configs/demo.toml",
                   "orizuru/data/sample/wiki.jsonl"):
        assert needed in names, needed


def test_installed_package_runs_from_outside_the_checkout(installed, tmp_path):
    where = run(installed, ["python", "-c", "import orizuru; print(orizuru.__file__)"], tmp_path)
    assert where.returncode == 0, where.stderr
    assert str(installed.parent) in where.stdout and str(ROOT) not in where.stdout

    plan = run(installed, ["orizuru", "plan", "--compute", "1e21"], tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "params" in plan.stdout.lower()

    model = build_tiny_model(tmp_path / "model")
    out = tmp_path / "eval"
    ev = run(installed, ["orizuru", "eval", "--model", str(model), "--tasks", "fast", "--limit", "5", "--output", str(out)], tmp_path)
    assert ev.returncode == 0, ev.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"jcommonsenseqa", "jnli"}
    assert all(r["n"] == 5 for r in results["tasks"].values())
