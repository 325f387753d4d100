"""`orizuru scaling data|sweep|fit|predict`: fit your own scaling law from small runs, predict the big one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from orizuru.config import load_config
from orizuru.errors import UserError
from orizuru.scaling.fit import _iv, fit, format_fit, predict, write_report
from orizuru.scaling.sweep import SweepConfig, load_runs, sample_data, sweep


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="orizuru scaling", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("sweep", help="run (or resume) an IsoFLOP grid of small pre-training runs")
    sp.add_argument("--config", required=True, help="sweep TOML (see configs/scaling/)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    sp.add_argument("--dry-run", action="store_true", help="list the grid and what is done, train nothing")
    sp.add_argument("--jobs", type=int, default=1, help="runs trained at once, each its own process (default 1)")
    dp = sub.add_parser("data", help="tokenizer + shards from the shipped text, for a CPU sweep")
    dp.add_argument("--out", default="runs/scaling", help="writes OUT/tokenizer and OUT/data")
    dp.add_argument("--vocab-size", type=int, default=512)
    fp = sub.add_parser("fit", help="fit Approaches 2 and 3 to finished runs")
    fp.add_argument("runs", nargs="+", metavar="RUN_DIRS", help="run directories, or sweep directories holding them")
    fp.add_argument("--out", help="report directory (fit.json, report.md, PNGs); default <first dir>/fit")
    fp.add_argument("--count", choices=["total", "non-embedding"], default="total", help="which parameters are N")
    fp.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for the intervals")
    fp.add_argument("--min-steps", type=int, default=0, help="leave out runs shorter than this many steps")
    fp.add_argument("--json", action="store_true", help="print the fit as JSON")
    pp = sub.add_parser("predict", help="predict the loss of a run from a fit")
    pp.add_argument("--fit", required=True, help="fit.json from `orizuru scaling fit`")
    pp.add_argument("--params", type=float)
    pp.add_argument("--tokens", type=float)
    pp.add_argument("--run", help="a finished run: take N and D from it and report the prediction error")
    pp.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    if args.cmd == "sweep":
        cfg = load_config(SweepConfig, args.config, args.set)
        rows = sweep(cfg, dry_run=args.dry_run, jobs=args.jobs)
        for r in rows:
            loss = f"val_loss {r['val_loss']:.4f}" if "val_loss" in r else r["status"]
            print(f"{r['name']:<14} C {r['compute']:.3g}  dim {r['dim']:>4} depth {r['depth']:>2} "
                  f"steps {r['steps']:>6}  {loss}")
        return 0
    if args.cmd == "data":
        if args.vocab_size < 512:
            raise UserError(f"--vocab-size must be >= 512 (256 byte tokens + specials + merges), got {args.vocab_size}")
        print(json.dumps(sample_data(Path(args.out), args.vocab_size)))
        return 0
    if args.cmd == "fit":
        if args.bootstrap < 0:
            raise UserError(f"--bootstrap must be >= 0, got {args.bootstrap}")
        runs = load_runs(args.runs, args.count, args.min_steps)
        res = fit(runs, n_boot=args.bootstrap)
        res.update(count=args.count, min_steps=args.min_steps)
        out = Path(args.out or Path(args.runs[0]) / "fit")
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
