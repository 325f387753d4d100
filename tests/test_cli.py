"""The command line built from config dataclasses (orizuru/config.py: parse_command, parse_subcommand)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Literal

import pytest

from orizuru import cli
from orizuru.config import ConfigError, field_docs, parse_command, parse_subcommand, positional, stage_config
from orizuru.train.config import PretrainConfig


@dataclass
class Section:
    """A nested section."""

    rate: float = 0.5  # a rate
    names: list[str] = field(default_factory=lambda: ["a"])
    on: bool = True


@dataclass
class Command:
    model: str  # the model directory
    steps: int = 10  # optimizer steps
    mode: Literal["fast", "slow"] = "fast"
    output: str | None = None
    """where results go (a docstring below the field)"""
    dry_run: bool = False
    section: Section = field(default_factory=Section)


def parse(argv: list[str]) -> Command:
    return parse_command(Command, argv, "orizuru test")


def test_a_flag_and_the_same_set_give_the_same_config():
    flags = parse(["--model", "m", "--steps", "3", "--section.rate", "0.25", "--section.names", "x", "y", "--no-section.on"])
    sets = parse(["--set", "model=m", "--set", "steps=3", "--set", "section.rate=0.25", "--set", "section.names=['x', 'y']",
                  "--set", "section.on=false"])
    assert flags == sets == Command(model="m", steps=3, section=Section(rate=0.25, names=["x", "y"], on=False))
    assert parse(["--model=m", "--dry_run", "--section.rate=1"]) == parse(["--model", "m", "--dry-run", "--section.rate", "1"])


def test_precedence_defaults_then_file_then_flags_in_order(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('model = "from-file"\nsteps = 5\n[section]\nrate = 0.75\n')
    assert parse(["--config", str(config)]) == Command(model="from-file", steps=5, section=Section(rate=0.75))
    cfg = parse(["--config", str(config), "--steps", "7", "--set", "steps=8", "--model", "m"])
    assert (cfg.model, cfg.steps, cfg.section.rate, cfg.mode) == ("m", 8, 0.75, "fast")
    assert parse(["--config", str(config), "--set", "steps=8", "--steps", "7"]).steps == 7


def test_text_stays_text_where_a_string_is_wanted():
    cfg = parse(["--model", "2024", "--output", "true", "--section.names", "1", "[2]"])
    assert (cfg.model, cfg.output, cfg.section.names) == ("2024", "true", ["1", "[2]"])
    assert parse(["--model", "m", "--set", "output=2024"]).output == "2024"


def test_a_repeated_list_flag_adds_to_its_list_and_replaces_the_file(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('model = "m"\n[section]\nnames = ["file"]\n')
    assert parse(["--config", str(config), "--section.names", "a", "--section.names", "b", "c"]).section.names == ["a", "b", "c"]
    assert parse(["--config", str(config)]).section.names == ["file"]


@pytest.mark.parametrize("argv, message", [
    (["--model", "m", "--steps", "many"], "config key 'steps': expected an integer, got 'many'"),
    (["--model", "m", "--mode", "medium"], "config key 'mode': expected one of 'fast', 'slow', got 'medium'"),
    (["--model", "m", "--set", "section.rat=1"], "unknown config key 'section.rat'"),
    (["--model", "m", "--set", "steps"], "--set expects key=value"),
    (["--steps", "3"], "--model is required"),
    (["--model", "m", "--stpes", "3"], "unrecognized arguments: --stpes"),
])
def test_bad_values_are_one_line_errors_naming_the_key(argv, message):
    with pytest.raises(ConfigError) as e:
        parse(argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_command_error_is_one_line_exit_2(capsys):
    assert cli.main(["generate", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "orizuru generate: error: --model is required (config key 'model')"
    assert cli.main(["pretrain", "--train.max-steps", "soon"]) == 2
    assert "config key 'train.max_steps': expected an integer, got 'soon'" in capsys.readouterr().err


def test_help_text_comes_from_comments_and_docstrings(capsys):
    assert field_docs(Command) == {"model": "the model directory", "steps": "optimizer steps",
                                   "output": "where results go (a docstring below the field)"}
    with pytest.raises(SystemExit) as e:
        parse(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for text in ("--model MODEL", "the model directory (required)", "optimizer steps (default: 10)", "{fast,slow}",
                 "--dry-run, --no-dry-run", "[section]:", "A nested section.", "--section.names [NAMES ...]",
                 'default: ["a"]', "--section.on, --no-section.on"):
        assert text in out, text


@dataclass
class Fit:
    """Fit runs."""

    run_dirs: list[str] = positional()  # run directories
    count: int = 1


@dataclass
class Build:
    """Build with a stage config."""

    input: list[str]  # inputs
    workers: int = 1
    stage: PretrainConfig = stage_config(PretrainConfig)


def test_subcommands_positionals_and_stage_configs(tmp_path):
    assert parse_subcommand({"fit": Fit}, ["fit", "a", "b", "--count", "2"], "orizuru x") == ("fit", Fit(["a", "b"], 2))
    with pytest.raises(ConfigError, match="RUN_DIRS"):
        parse_subcommand({"fit": Fit}, ["fit"], "orizuru x")
    config = tmp_path / "p.toml"
    config.write_text("[train]\nmax_steps = 3\n")
    name, cfg = parse_subcommand({"build": Build}, ["build", "--input", "i", "--config", str(config), "--set", "train.lr=0.01",
                                                   "--model.dim", "64", "--workers", "2"], "orizuru x")
    assert name == "build" and (cfg.input, cfg.workers) == (["i"], 2)
    assert (cfg.stage.train.max_steps, cfg.stage.train.lr, cfg.stage.model.dim) == (3, 0.01, 64)
    with pytest.raises(ConfigError, match="unknown config key 'workers'"):  # --set and --config hold the stage's keys only
        parse_subcommand({"build": Build}, ["build", "--input", "i", "--set", "workers=2"], "orizuru x")


def test_aliases():
    cfg = parse_command(PretrainConfig, ["--init-from", "hf/dir"], "orizuru pretrain", aliases={"init-from": "train.init_from"})
    assert cfg.train.init_from == "hf/dir"


def _helps():
    """argv of every command's --help and of each of its subcommands'."""
    for name, (module, _) in cli.COMMANDS.items():
        subcommands = getattr(importlib.import_module(module), "SUBCOMMANDS", None)
        yield from ([name, sub, "--help"] for sub in subcommands) if subcommands else [[name, "--help"]]


@pytest.mark.parametrize("argv", list(_helps()), ids=" ".join)
def test_every_command_lists_its_flags_with_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "--config FILE" in out and "--set KEY=VALUE" in out and ("(default: " in out or "(required)" in out)
