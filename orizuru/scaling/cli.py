"""`orizuru scaling data|sweep|fit|predict`: fit your own scaling law from small runs, predict the big one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orizuru.config import ConfigError, parse_subcommand, positional, stage_config
from orizuru.errors import UserError
from orizuru.scaling.fit import _iv, fit, format_fit, predict, write_report
from orizuru.scaling.sweep import SweepConfig, load_runs, sample_data, sweep


@dataclass
class ScalingSweep:
    """Run (or resume) an IsoFLOP grid of small pre-training runs (configs/scaling/ has one)."""

    dry_run: bool = False  # list the grid and what is done, train nothing
    jobs: int = 1  # runs trained at once, each its own process
    sweep: SweepConfig = stage_config(SweepConfig)


@dataclass
class ScalingData:
    """Tokenizer + shards from the shipped text, for a CPU sweep."""

    out: str = "runs/scaling"  # writes OUT/tokenizer and OUT/data
    vocab_size: int = 512

    def validate(self) -> None:
        if self.vocab_size < 512:
            raise ConfigError(f"--vocab-size must be >= 512 (256 byte tokens + specials + merges), got {self.vocab_size}")


@dataclass
class ScalingFit:
    """Fit Approaches 2 and 3 to finished runs."""

    run_dirs: list[str] = positional()  # run directories, or sweep directories holding them
    out: str | None = None  # report directory (fit.json, report.md, PNGs); None: <first dir>/fit
    count: Literal["total", "non-embedding"] = "total"  # which parameters are N
    bootstrap: int = 100  # bootstrap resamples for the intervals
    min_steps: int = 0  # leave out runs shorter than this many steps
    json: bool = False  # print the fit as JSON

    def validate(self) -> None:
        if self.bootstrap < 0:
            raise ConfigError(f"--bootstrap must be >= 0, got {self.bootstrap}")


@dataclass
class ScalingPredict:
    """Predict the loss of a run from a fit."""

    fit: str  # fit.json from `orizuru scaling fit`
    params: float | None = None  # parameters N
    tokens: float | None = None  # training tokens D
    run: str | None = None  # a finished run: take N and D from it and report the prediction error
    json: bool = False  # print the prediction as JSON


SUBCOMMANDS = {"data": ScalingData, "sweep": ScalingSweep, "fit": ScalingFit, "predict": ScalingPredict}


def main(argv: list[str]) -> int:
    cmd, args = parse_subcommand(SUBCOMMANDS, argv, "orizuru scaling", __doc__.split("\n\n")[0])
    if cmd == "sweep":
        rows = sweep(args.sweep, dry_run=args.dry_run, jobs=args.jobs)
        for r in rows:
            loss = f"val_loss {r['val_loss']:.4f}" if "val_loss" in r else r["status"]
            print(f"{r['name']:<14} C {r['compute']:.3g}  dim {r['dim']:>4} depth {r['depth']:>2} "
                  f"steps {r['steps']:>6}  lr {r['lr']:.3g}  {loss}")
        return 0
    if cmd == "data":
        print(json.dumps(sample_data(Path(args.out), args.vocab_size)))
        return 0
    if cmd == "fit":
        runs = load_runs(args.run_dirs, args.count, args.min_steps)
        res = fit(runs, n_boot=args.bootstrap)
        res.update(count=args.count, min_steps=args.min_steps)
        out = Path(args.out or Path(args.run_dirs[0]) / "fit")
        write_report(res, out)
        if args.json:
            a3 = {k: v for k, v in res["approach3"].items() if k != "samples"}
            print(json.dumps({**{k: v for k, v in res.items() if k != "runs"}, "approach3": a3}, indent=2))
        else:
            print(format_fit(res))
            print(f"\nreport: {out / 'report.md'}")
        return 0
    # predict
    try:
        fit_result = json.loads(Path(args.fit).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--fit: file not found: {args.fit}") from None
    except json.JSONDecodeError:
        raise UserError(f"--fit {args.fit}: not JSON (expected fit.json from `orizuru scaling fit`)") from None
    actual = None
    n, d = args.params, args.tokens
    if args.run:
        (run,) = load_runs([args.run], fit_result.get("count", "total"))
        for flag, given, real in (("--params", n, run["N"]), ("--tokens", d, run["D"])):
            if given is not None and abs(given / real - 1) > 0.01:
                raise UserError(f"{flag} {given:.4g} contradicts run {args.run}, which has {real:.4g}")
        n, d, actual = run["N"], run["D"], run["L"]
    if n is None or d is None:
        raise UserError("give --params and --tokens, or --run DIR")
    if n <= 0 or d <= 0:
        raise UserError(f"--params and --tokens must be positive, got {n} and {d}")
    out = predict(fit_result, n, d)
    if actual is not None:
        out.update(actual_loss=actual, error=out["predicted_loss"] / actual - 1)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        line = f"N {n:.4g}, D {d:.4g}: predicted loss {out['predicted_loss']:.4f} {_iv(out.get('interval90'))}"
        if actual is not None:
            line += f"\nactual {actual:.4f}: error {100 * out['error']:+.2f}%"
        if out["status"] != "ok":
            line += f"\nWARNING: the fit is {out['status']}"
        print(line)
    return 0
