"""The report card: report.json (the record, schema in report.schema.json), and report.md and a
self-contained report.html (plots inline as data URIs) rendered from it."""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

from orizuru.corpus.build import stats_markdown
from orizuru.files import atomic_write, read_jsonl, write_json
from orizuru.pipeline.measure import cost, environment
from orizuru.pipeline.plan import Pipeline, read_stage
from orizuru.report import cell, table
from orizuru.scaling.plan import LAWS, Sizing, optimal
from orizuru.tokenizer.report import report_markdown

SCHEMA = Path(__file__).with_name("report.schema.json")
STAGE_KEYS = ("name", "kind", "command", "status", "hash", "start", "end", "wall_s", "metrics", "artifacts", "measured")
HEADINGS = {"corpus": "Corpus", "tokenizer": "Tokenizer", "tokenize": "Token shards", "resize": "Model resize",
            "pretrain": "Pre-training", "sft": "Instruction tuning (SFT)", "dpo": "Preference optimisation (DPO)",
            "contamination": "Contamination"}
MODEL_LABEL = {"pretrain": "base", "resize": "base", "cpt": "continued pre-training", "sft": "SFT", "dpo": "DPO"}


def _loss_rows(path: str | None) -> list[dict]:
    if not path or not Path(path).exists():
        return []
    keep = ("step", "tokens", "loss", "val_loss")
    return [{k: r[k] for k in keep if k in r} for r in read_jsonl(path)]


def build_report(p: Pipeline) -> dict:
    """report.json's content from the stages' stage.json files (stages not run yet are `pending`)."""
    env = environment()
    stages, records = [], {}
    for s in p.stages:
        rec = read_stage(p.out, s.name)
        if rec is None or rec.get("hash") != s.hash:
            rec = {"name": s.name, "kind": s.kind, "command": s.command, "status": "pending", "hash": s.hash, "wall_s": None,
                   "metrics": {}, "artifacts": {}, "measured": {}}
        records[s.name] = rec
        stages.append({k: rec.get(k) for k in STAGE_KEYS})
    report: dict = {"schema_version": 1, "name": p.run.name, "pipeline": str(p.path), "out_dir": str(p.out),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "environment": env, "stages": stages,
                    "corpus": None, "tokenizer": None, "losses": {}, "scaling": None, "evaluation": None,
                    "contamination": None, "samples": [], "quality": None}
    done = {n: r for n, r in records.items() if r["status"] == "done"}
    for name, rec in done.items():
        kind, details = rec["kind"], rec.get("details") or {}
        if kind == "corpus" and report["corpus"] is None:
            report["corpus"] = {k: v for k, v in details["corpus"].items() if k != "skip_examples"}
        elif kind == "tokenizer" and "fertility" in details:
            report["tokenizer"] = details["fertility"]
        elif kind in ("pretrain", "sft", "dpo"):
            report["losses"][name] = _loss_rows(rec["artifacts"].get("metrics"))
            for sample in details.get("samples", []):
                report["samples"].append({"stage": name, **sample})
            if kind == "pretrain" and report["quality"] is None:
                report["quality"] = details.get("quality")
            if kind == "pretrain" and report["scaling"] is None:
                report["scaling"] = _scaling(details["summary"], details["config"])
        elif kind == "contamination":
            report["contamination"] = details["tasks"]
    evals = [(n, r, p.stage(n)) for n, r in done.items() if r["kind"] == "eval"]
    if evals:
        columns, tasks = [], {}
        for name, rec, stage in evals:
            model = stage.data.get("model")
            up = next((q for q in p.stages if q.name == model), None)
            kind = "cpt" if up and up.kind == "pretrain" and up.data["train"].get("init_from") else up.kind if up else None
            label = f"{MODEL_LABEL.get(kind, 'external')} ({name})"
            columns.append(label)
            for task, r in rec["details"]["results"]["tasks"].items():
                metric = next(iter(r["metrics"]), None)
                if metric is not None:
                    tasks.setdefault(task, {})[label] = {"metric": metric, "score": r["metrics"][metric], "stderr": r["stderr"].get(metric),
                                                         "n": r["n"]}
        report["evaluation"] = {"columns": columns, "tasks": tasks}
    report["cost"] = cost([r.get("measured") or {} for r in done.values()], p.run.cost, env)
    return report


def _scaling(summary: dict, config: dict) -> dict:
    """Planned (compute-optimal for the run's own budget) against actual tokens per parameter."""
    model, train = config["model"], config["train"]
    sizing = Sizing(vocab_size=model["vocab_size"], seq_len=train["seq_len"], tie_embeddings=model.get("tie_embeddings", False))
    n_opt, d_opt = optimal(summary["flops"], LAWS["besiroglu"], sizing)
    return {"flops": summary["flops"], "params": summary["params"], "tokens": summary["tokens"],
            "tokens_per_param": summary["tokens"] / summary["params"], "optimal_params": n_opt, "optimal_tokens": d_opt,
            "optimal_tokens_per_param": d_opt / n_opt, "law": "besiroglu"}


# ---------------------------------------------------------------- plots (PNG files, inlined in the HTML)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    return plt, fig, ax


def _save(plt, fig, ax, path: Path) -> Path:
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path, "wb", encoding=None) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def make_plots(report: dict, folder: Path) -> dict[str, Path]:
    plots: dict[str, Path] = {}
    corpus = report["corpus"]
    if corpus:
        plt, fig, ax = _figure()
        steps = list(corpus["steps"])
        ax.bar(steps, [corpus["steps"][s]["out"] for s in steps], color="#4c72b0")
        ax.set_ylabel("documents kept")
        ax.set_title(f"corpus funnel: {corpus['docs_in']:,} read -> {corpus['docs_out']:,} kept")
        removed = [(f"{st}:{r}", n) for st, rs in corpus["dropped"].items() for r, n in rs.items()]
        if removed:
            text = "\n".join(f"{k} -{n:,}" for k, n in sorted(removed, key=lambda kv: -kv[1])[:8])
            ax.text(1.02, 1.0, "removed by rule\n" + text, transform=ax.transAxes, va="top", fontsize=7, family="monospace")
        plots["corpus"] = _save(plt, fig, ax, folder / "corpus_funnel.png")
    tok = report["tokenizer"]
    if tok:
        plt, fig, ax = _figure()
        langs = [lang for lang in ("ja", "en") if any(lang in t for t in tok["tokenizers"])]
        width = 0.8 / max(1, len(tok["tokenizers"]))
        for i, t in enumerate(tok["tokenizers"]):
            ax.bar([j + i * width for j in range(len(langs))], [t.get(lang, {}).get("chars_per_token", 0) for lang in langs], width,
                   label=t["name"])
        ax.set_xticks([j + width * (len(tok["tokenizers"]) - 1) / 2 for j in range(len(langs))], langs)
        ax.set_ylabel("characters per token (higher: fewer tokens)")
        ax.set_title("tokenizer fertility against the baselines")
        ax.legend(fontsize=8)
        plots["tokenizer"] = _save(plt, fig, ax, folder / "tokenizer_fertility.png")
    for name, rows in report["losses"].items():
        if not any("loss" in r for r in rows):
            continue
        plt, fig, ax = _figure()
        xs = "tokens" if all("tokens" in r for r in rows) else "step"
        ax.plot([r[xs] for r in rows if "loss" in r], [r["loss"] for r in rows if "loss" in r], label="train loss", lw=1.2)
        val = [r for r in rows if "val_loss" in r]
        if val:
            ax.plot([r[xs] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
        ax.set_xlabel("tokens seen" if xs == "tokens" else "step")
        ax.set_ylabel("loss")
        ax.set_title(f"{name}: loss")
        ax.legend()
        plots[f"loss:{name}"] = _save(plt, fig, ax, folder / f"loss_{name}.png")
    sc = report["scaling"]
    if sc:
        plt, fig, ax = _figure()
        ax.bar(["actual", "compute-optimal"], [sc["tokens_per_param"], sc["optimal_tokens_per_param"]], color=["#dd8452", "#55a868"])
        ax.set_ylabel("training tokens per parameter")
        ax.set_title(f"scaling-law check at {sc['flops']:.3g} FLOPs (Besiroglu et al. 2024)")
        plots["scaling"] = _save(plt, fig, ax, folder / "scaling.png")
    return plots


# ---------------------------------------------------------------- Markdown and HTML from report.json


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def stage_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    header = ["stage", "status", "wall time", "tokens", "tokens/s", "MFU", "peak memory", "final loss", "val loss"]
    rows = []
    for s in report["stages"]:
        m, meas = s.get("metrics") or {}, s.get("measured") or {}
        memory = f"{meas['peak_gpu_mem_mb']:,.0f} MB GPU" if "peak_gpu_mem_mb" in meas else \
            f"{meas['peak_rss_mb']:,.0f} MB RSS" if "peak_rss_mb" in meas else None
        rows.append([s["name"], s["status"], f"{s['wall_s']:.1f} s" if s.get("wall_s") is not None else None, m.get("tokens"),
                     m.get("tokens_per_s"), m.get("mfu"), memory, m.get("train_loss"), m.get("val_loss")])
    return header, [[_fmt(c) for c in r] for r in rows]


def eval_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    ev = report["evaluation"]
    header = ["task", *ev["columns"]]
    rows = []
    for task, cols in ev["tasks"].items():
        row = [task]
        for c in ev["columns"]:
            r = cols.get(c)
            row.append("—" if r is None else f"{r['score']:.4f} ± {r['stderr'] or 0:.4f} ({r['metric']}, n={r['n']})")
        rows.append(row)
    return header, rows


def cost_rows(report: dict) -> list[tuple[str, str]]:
    c = report["cost"]
    rows = [("GPU-hours", f"{c['gpu_hours']:.4f}" + (f" ({c['gpu']})" if c.get("gpu") else "")), ("energy", c["energy"])]
    if "estimated_kwh" in c:
        rows.append(("estimate: GPU-h × board power × PUE", f"{c['estimated_kwh']:.4g} kWh, {c['estimated_tco2eq']:.3g} tCO2eq "
                     f"({c['board_power_w']} W, PUE {c['pue']}, {c['carbon_intensity_t_per_mwh']} tCO2eq/MWh)"))
    if "measured_kwh" in c:
        rows.append(("measured (NVML) × PUE", f"{c['measured_kwh']:.4g} kWh, {c['measured_tco2eq']:.3g} tCO2eq"))
    if "price" in c:
        rows.append(("price", f"{c['price']:.2f}"))
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _flagged(report: dict) -> list[str]:
    return [t for t, r in (report["contamination"] or {}).items() if r["contaminated"]]


QUALITY = [("val_bpb", "validation bits per byte", "<= 1.7"),
           ("common_char_share", "sampled characters among the 3,000 most common", ">= 0.97"),
           ("greedy_distinct_4grams", "distinct character 4-grams, greedy", ">= 0.4")]


def sections(report: dict, plots: dict[str, Path], image) -> list[tuple[str, str, list]]:
    """(heading, Markdown text, [images]) per section; `image(path, alt)` is how a plot is shown."""
    env = report["environment"]
    out = [("Environment", table([(k, _fmt(v)) for k, v in env.items()]), []),
           ("Stages", _md_table(*stage_rows(report)), [])]
    if q := report.get("quality"):
        rows = [(label, f"{_fmt(q.get(key))} (target {target})") for key, label, target in QUALITY]
        out.insert(0, ("Does it write Japanese?", table(rows) + "\n\nFrom the pre-trained model's continuations of the demo prompts "
                       "(`orizuru/demo/quality.py`; common characters: the 3,000 most frequent in the shipped Aozora and Wikipedia text).", []))
    if report["corpus"]:
        out.append(("Corpus", stats_markdown(report["corpus"]).replace("## Corpus build\n", ""), [image(plots["corpus"], "corpus funnel")]))
    if report["tokenizer"]:
        out.append(("Tokenizer", report_markdown(report["tokenizer"]), [image(plots["tokenizer"], "tokenizer fertility")]))
    for name, path in plots.items():
        if name.startswith("loss:"):
            stage = name[5:]
            kind = next(s["kind"] for s in report["stages"] if s["name"] == stage)
            m = next(s["metrics"] for s in report["stages"] if s["name"] == stage)
            out.append((HEADINGS[kind] if kind != "pretrain" else "Pre-training", table([(k, _fmt(v)) for k, v in m.items()]),
                        [image(path, "loss curve")]))
    if report["scaling"]:
        sc = report["scaling"]
        out.append(("Scaling-law check", table([
            ("training compute", f"{sc['flops']:.3g} FLOPs"),
            ("tokens per parameter", f"{sc['tokens_per_param']:.1f} (compute-optimal: {sc['optimal_tokens_per_param']:.1f})"),
            ("compute-optimal size for this budget", f"{sc['optimal_params']:.3g} parameters on {sc['optimal_tokens']:.3g} tokens")]),
            [image(plots["scaling"], "scaling-law check")]))
    if report["evaluation"]:
        note = ""
        if flagged := _flagged(report):
            note = "\n\n**Contaminated** (n-gram overlap with the training corpus): " + ", ".join(flagged)
        base = any(c.startswith("base") for c in report["evaluation"]["columns"])
        out.append(("Base-model evaluation" if base and len(report["evaluation"]["columns"]) == 1 else "Evaluation",
                    _md_table(*eval_rows(report)) + note, []))
    if report["contamination"] is not None:
        rows = [[t, str(r["examples"]), str(r["contaminated"]), f"{r['fraction']:.3f}", "**contaminated**" if r["contaminated"] else "clean"]
                for t, r in report["contamination"].items()]
        out.append(("Contamination", _md_table(["task", "examples", "contaminated", "fraction", "flag"], rows), []))
    if report["samples"]:
        rows = [[s["stage"], s["prompt"], *(s.get(k, "") for k in ("greedy", "sampled", "before", "after"))] for s in report["samples"]]
        out.append(("Samples", _md_table(["stage", "prompt", "greedy", "sampled", "before", "after"], rows), []))
    out.append(("Cost and energy", table(cost_rows(report)), []))
    return out


def render_markdown(report: dict, plots: dict[str, Path], out: Path) -> str:
    parts = [f"# {report['name']}", "", f"Pipeline `{report['pipeline']}`, {report['created']}.", ""]
    for heading, text, images in sections(report, plots, lambda p, alt: f"![{alt}]({p.relative_to(out).as_posix()})"):
        parts += [f"## {heading}", "", *images, "" if images else None, text.rstrip(), ""]
    return "\n".join(x for x in parts if x is not None)


def _md_to_html(text: str) -> str:
    """The Markdown this module writes (tables, sub-headings, paragraphs, `code`, **bold**) as HTML."""
    blocks, out = text.split("\n\n"), []
    for block in blocks:
        lines = [ln for ln in block.strip().split("\n") if ln.strip()]
        if not lines:
            continue
        while lines and lines[0].startswith("#"):  # a sub-heading inside a section (the tokenizer report's)
            level = min(len(lines[0]) - len(lines[0].lstrip("#")) + 1, 6)
            out.append(f"<h{level}>{_inline(lines.pop(0).lstrip('#').strip())}</h{level}>")
        if not lines:
            continue
        if all(ln.startswith("|") for ln in lines):
            rows = [[c.strip().replace("\\|", "|") for c in ln.strip().strip("|").split(" | ")] for ln in lines if not set(ln) <= set("|-: ")]
            head, body = rows[0], rows[1:]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body) + "</table>")
        else:
            out.append("<p>" + "<br>".join(_inline(ln) for ln in lines) + "</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top;
max-width:28em;overflow-wrap:anywhere}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}code{background:#f3f3f3;padding:0 3px}h2{border-bottom:1px solid #ddd}"""


def render_html(report: dict, plots: dict[str, Path]) -> str:
    def image(path: Path, alt: str) -> str:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    body = [f"<h1>{html.escape(report['name'])}</h1>", f"<p>Pipeline <code>{html.escape(report['pipeline'])}</code>, {report['created']}.</p>"]
    for heading, text, images in sections(report, plots, image):
        body += [f"<h2>{html.escape(heading)}</h2>", *images, _md_to_html(text)]
    return ("<!DOCTYPE html>\n<html lang=\"ja\"><head><meta charset=\"utf-8\"><title>" + html.escape(report["name"])
            + f"</title><style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_reports(p: Pipeline) -> Path:
    """report.json, report.md (plots as PNG files under report/) and the self-contained report.html."""
    report = build_report(p)
    write_json(p.out / "report.json", report)
    plots = make_plots(report, p.out / "report")
    if "loss:" + next((s["name"] for s in report["stages"] if s["kind"] == "pretrain"), "") in plots:
        pre = next(s["name"] for s in report["stages"] if s["kind"] == "pretrain")
        plots[f"loss:{pre}"] = _copy(plots[f"loss:{pre}"], p.out / "loss.png")  # where the demo's report always had it
    with atomic_write(p.out / "report.md") as f:
        f.write(render_markdown(report, plots, p.out))
    with atomic_write(p.out / "report.html") as f:
        f.write(render_html(report, plots))
    return p.out / "report.md"


def _copy(src: Path, dst: Path) -> Path:
    with atomic_write(dst, "wb", encoding=None) as f:
        f.write(src.read_bytes())
    src.unlink()
    return dst


def schema() -> dict:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))
