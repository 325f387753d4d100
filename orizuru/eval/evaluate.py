"""`orizuru eval`: score a model directory on Japanese tasks; resumable, every prompt dumped.

OUT/<task>.jsonl gets one record per (template, choice order, example) as soon as its batch is
scored, so a killed run keeps its work and a rerun scores only what is missing. results.json and
summary.md are rewritten from all records at the end of each task.

Under `torchrun` the evaluation is data-parallel: each group of CHUNK x processes pending examples
is cut into one slice per rank, the records are gathered and rank 0 writes them in the order one
process would, so results.json holds the same scores as a one-process run (greedy decoding; with
samples > 1 the draws depend on the batches, as they do for any --batch change).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from tqdm import tqdm

from orizuru.errors import UserError
from orizuru.eval import generative as G
from orizuru.eval import likelihood as L
from orizuru.eval import metrics as M
from orizuru.eval import robustness as R
from orizuru.eval import safety as S
from orizuru.eval.sandbox import humaneval_program, run_program
from orizuru.eval.tasks import Example, Task, load_examples, load_task, render, task_names
from orizuru.files import append_jsonl, atomic_write, read_jsonl, write_json
from orizuru.model.checkpoint import load_model
from orizuru.runtime import inference_device, init_distributed, world_info
from orizuru.tokenizer.tokenizer import Tokenizer

FAST_SUBSET = ["jcommonsenseqa", "jnli"]  # likelihood only: seconds on CPU for a ~10M model
CHUNK = 32  # examples scored between appends to the task's JSONL


@dataclass
class EvalConfig:
    """`orizuru eval`: a model directory on Japanese tasks; results go to --output (a rerun resumes)."""

    model: str  # HF Llama model directory (config.json, weights, tokenizer.json)
    tasks: list[str]  # task names (orizuru/eval/tasks/) or task files (path/to/task.toml), also comma-separated; 'fast' or 'all'
    output: str  # output directory (a rerun resumes)
    shots: int | None = None  # few-shot exemplars per prompt; None: each task's default
    limit: int | None = None  # evaluate only the first N examples of each task
    templates: Literal["first", "all"] = "first"  # all: every template, with the spread
    permute_choices: int = 0  # also score this many shuffled choice orders
    samples: int = 1  # samples per prompt (maj@k, pass@k)
    temperature: float = 0.7  # sampling temperature when samples > 1
    seed: int = 1234
    batch_tokens: int = 4096  # token budget per likelihood batch
    truncate: Literal["left", "error"] = "left"  # prompts longer than the context: drop the oldest tokens (counted) or fail
    code_timeout: float = 10.0  # seconds per generated program (jhumaneval)
    max_new_tokens: int | None = None  # cap on every task's own generation length
    device: str = "auto"  # auto|cpu|cuda|cuda:N (auto: CUDA when present; under torchrun each rank its GPU)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # weights' dtype (auto: bf16 on CUDA, float32 on CPU)

    def task_list(self) -> list[str]:
        """The task names, with 'fast' and 'all' expanded and comma-separated names split."""
        names = []
        for item in self.tasks:
            names += {"fast": FAST_SUBSET, "all": task_names()}.get(item) or [t.strip() for t in item.split(",") if t.strip()]
        return names

    def settings(self) -> dict:
        """What a score depends on besides the model (the run's identity in run.json and results.json)."""
        return {k: v for k, v in asdict(self).items() if k not in ("model", "tasks", "output", "device")}


def model_identity(model_dir: Path) -> dict:
    """Hash of config.json + tokenizer.json: what a score belongs to."""
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json"):
        path = model_dir / name
        if not path.is_file():
            raise UserError(f"{model_dir}: not a model directory ({name} missing)")
        h.update(path.read_bytes())
    return {"dir": str(model_dir), "config_hash": h.hexdigest()[:16]}


def _variants(task: Task, settings: EvalConfig) -> list[tuple[str, int]]:
    templates = [t.id for t in task.templates] if settings.templates == "all" else [task.templates[0].id]
    perms = [0]
    if settings.permute_choices and (task.choices is not None or "choices" in task.fields):
        perms += list(range(1, settings.permute_choices + 1))
    return [(t, p) for t in templates for p in perms]


def _key(rec: dict) -> tuple:
    return rec["template"], rec["permutation"], rec["id"]


# ---------------------------------------------------------------- per-method scoring


def _shown(ex: Example, perm: int) -> tuple[list[str] | None, list[int] | None]:
    """Choices in the order shown for permutation `perm` (0: original order), and that order."""
    if ex.choices is None:
        return None, None
    seed = 0 if perm == 0 else 1 + int(hashlib.sha256(f"{perm}/{ex.id}".encode()).hexdigest()[:12], 16)
    order = R.permutation(len(ex.choices), seed)
    return [ex.choices[i] for i in order], order


def _likelihood(task, template, chunk, exemplars, perm, model, tok, settings, max_len, bar) -> list[dict]:
    encoded, spans, prompts = [], [], []
    for ex in chunk:
        choices, order = _shown(ex, perm)
        prompt = render(task, template, ex, exemplars, choices)
        prompts.append((prompt, choices, order))
        spans.append(len(encoded))
        encoded += [L.encode_pair(tok, prompt, c, max_len, settings.truncate) for c in choices]
    scores = L.score(model, encoded, batch_tokens=settings.batch_tokens, pad_id=tok.pad_id)
    records = []
    for ex, start, (prompt, choices, order) in zip(chunk, spans, prompts):
        s = scores[start : start + len(choices)]
        enc = encoded[start : start + len(choices)]
        lp = [x["logprob"] for x in s]
        gold = order.index(ex.gold)
        norm = [v / max(1, len(c)) for v, c in zip(lp, choices)]
        per_byte = [v / max(1, len(c.encode("utf-8"))) for v, c in zip(lp, choices)]
        preds = {"acc": _argmax(lp), "acc_norm": _argmax(norm), "acc_bytes": _argmax(per_byte)}
        records.append({
            "prompt": prompt, "choices": choices, "order": order, "logprobs": lp,
            "tokens": [x["tokens"] for x in s], "prediction": preds["acc"], "gold": gold,
            "scores": {m: float(p == gold) for m, p in preds.items()},
            "predictions": preds,
            "boundary_merges": sum(e.boundary_merge for e in enc), "truncated": max(e.truncated for e in enc),
        })
        bar.update(1)
    return records


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _generate(task, template, chunk, exemplars, perm, model, tok, settings, max_len, bar) -> list[dict]:
    prompts, ids, truncated = [], [], []
    max_new = min(task.max_new_tokens, settings.max_new_tokens or task.max_new_tokens)
    for ex in chunk:
        choices, order = _shown(ex, perm)
        prompt = render(task, template, ex, exemplars, choices)
        p_ids, cut = tok.encode_prompt(prompt, max_len - max_new, settings.truncate == "left")
        prompts.append((prompt, order))
        ids.append(p_ids)
        truncated.append(cut)
    k = settings.samples
    samples = [G.complete(model, tok, ids, max_new_tokens=max_new, stop=task.stop,
                          temperature=0.0 if k == 1 else settings.temperature,
                          seed=settings.seed + j)
               for j in range(k)]
    records = []
    for n, ex in enumerate(chunk):
        (prompt, order), texts = prompts[n], [s[n] for s in samples]
        gold = ex.gold if order is None else [str(order.index(int(g))) for g in ex.gold]
        if task.method == "code":
            records.append(_code_record(task, ex, prompt, texts, settings))
        elif task.method == "safety":
            records.append({"prompt": prompt, "generations": texts, "prediction": None, "gold": None,
                            "scores": S.score_samples(texts)})
        else:
            answers = [G.extract_answer(t, task.extract) for t in texts]
            pred = G.vote(answers)
            scores = G.score_answer(pred, gold, task.metrics)
            rec = {"prompt": prompt, "generations": texts, "answers": answers, "prediction": pred, "gold": gold,
                   "scores": scores}
            if k > 1:  # also the first sample alone, to show what the vote adds
                rec["scores"].update({f"{m}@first": v for m, v in G.score_answer(answers[0], gold, task.metrics).items()})
            records.append(rec)
        records[-1]["truncated"] = truncated[n]
        if order is not None:
            records[-1]["order"] = order
        bar.update(1)
    return records


def _code_record(task, ex, prompt, texts, settings) -> dict:
    programs = [humaneval_program(prompt, t, ex.vars["test"], ex.vars["entry_point"]) for t in texts]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # each program is its own sandboxed process
        results = list(pool.map(lambda code: run_program(code, timeout=settings.code_timeout), programs))
    c = sum(r.passed for r in results)
    scores = {m: M.pass_at_k(len(texts), c, int(m.split("@")[1]))
              for m in task.metrics if int(m.split("@")[1]) <= len(texts)}
    return {"prompt": prompt, "generations": texts, "passed": [r.passed for r in results],
            "status": [r.status for r in results], "prediction": c, "gold": None, "scores": scores}


# ---------------------------------------------------------------- aggregation


def _summarize(task: Task, records: list[dict], shots: int, settings: EvalConfig, cf: dict) -> dict:
    by_variant: dict[tuple, list[dict]] = {}
    for r in records:
        by_variant.setdefault((r["template"], r["permutation"]), []).append(r)
    first_template = task.templates[0].id

    def scores_of(rows):
        names = sorted({m for r in rows for m in r["scores"]})
        return {m: float(sum(r["scores"][m] for r in rows) / len(rows)) for m in names if all(m in r["scores"] for r in rows)}

    base = by_variant.get((first_template, 0), [])
    out = {
        "method": task.method, "n": len(base), "shots": shots, "template": first_template, "seed": settings.seed,
        "samples": settings.samples, "metric": task.metrics[0], "metrics": scores_of(base) if base else {},
        "stderr": {m: M.std_error([r["scores"][m] for r in base]) for m in (scores_of(base) if base else {})},
        "truncated_examples": sum(1 for r in base if r.get("truncated")),
        "has_choices": task.choices is not None or "choices" in task.fields,  # --permute-choices applies
    }
    if task.method == "likelihood":
        out["boundary_merges"] = sum(r["boundary_merges"] for r in base)
    templates = {t: scores_of(rows) for (t, p), rows in by_variant.items() if p == 0}
    if len(templates) > 1:
        out["templates"] = templates
        out["template_spread"] = R.template_spread(templates)
        out["template_stderr"] = {m: R.stderr_over([v[m] for v in templates.values()]) for m in out["template_spread"]}
    perms = {p: rows for (t, p), rows in by_variant.items() if t == first_template}
    if len(perms) > 1:
        primary = task.metrics[0]
        accs = [scores_of(rows)[primary] for rows in perms.values()]
        positions = [r["prediction"] if task.method == "likelihood" else _position(r) for rows in perms.values() for r in rows]
        n_choices = len(base[0]["order"]) if base and "order" in base[0] else 0
        out["permutations"] = {
            "metric": primary, "n_orders": len(perms), **R.spread(accs), "stderr": R.stderr_over(accs),
            "position_bias": R.position_bias([p for p in positions if p is not None], n_choices),
        }
    if task.classification and task.method == "likelihood" and base:
        out["calibration"] = R.calibration([r["logprobs"] for r in base], [r["gold"] for r in base], cf[first_template])
    return out


def _position(record: dict) -> int | None:
    try:
        return int(str(record["prediction"]).strip())
    except ValueError:
        return None


# ---------------------------------------------------------------- driver


def evaluate(cfg: EvalConfig) -> dict:
    """Evaluate `cfg.model` on `cfg.tasks`; write OUT/results.json, OUT/<task>.jsonl, OUT/summary.md."""
    model_dir, output = Path(cfg.model), Path(cfg.output)
    loaded = [load_task(name) for name in cfg.task_list()]  # unknown names fail before any work
    names = [t.name for t in loaded]
    if len(set(names)) != len(names):
        raise UserError(f"--tasks: two tasks named {sorted({n for n in names if names.count(n) > 1})} "
                        "(a task file's name is its stem); rename a file")
    identity = model_identity(model_dir)
    device, dtype = inference_device(cfg.device, cfg.dtype)
    rank, world = init_distributed()
    output.mkdir(parents=True, exist_ok=True)
    run_file = output / "run.json"
    run = {"model": identity, "settings": {k: v for k, v in cfg.settings().items() if k != "limit"}}
    if run_file.exists() and json.loads(run_file.read_text()) != run:
        raise UserError(f"{output}: holds results for other settings or another model (see {run_file}); use a new --output")
    _barrier()
    if rank == 0:
        write_json(run_file, run)

    tok = Tokenizer.load(model_dir)
    model = load_model(model_dir, device=device, dtype=dtype).eval()
    max_len = model.cfg.max_seq_len
    results_file = output / "results.json"
    previous = json.loads(results_file.read_text())["tasks"] if results_file.exists() else {}
    results = {"model": identity, "settings": cfg.settings(), "processes": world, "tasks": previous}
    torch.manual_seed(cfg.seed)
    for task in loaded:
        results["tasks"][task.name] = _run_task(task, model, tok, cfg, max_len, output)
        if rank == 0:
            write_json(output / "results.json", results)
    if rank == 0:
        with atomic_write(output / "summary.md") as f:
            f.write(summary_markdown(results))
    _barrier()
    return results


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _scored_in_parallel(score, chunk: list[Example], bar) -> list[dict]:
    """Records of `chunk` in order, each rank scoring its contiguous slice (every rank gets all)."""
    rank, world = world_info()
    if world == 1:
        return score(chunk)
    per = -(-len(chunk) // world)
    mine = chunk[rank * per : (rank + 1) * per]
    parts = [None] * world
    dist.all_gather_object(parts, score(mine) if mine else [])
    bar.update(len(chunk) - len(mine))  # the other ranks' examples
    return [rec for part in parts for rec in part]


def _run_task(task: Task, model, tok, settings: EvalConfig, max_len: int, output: Path) -> dict:
    shots = task.default_shots if settings.shots is None else settings.shots
    if shots > len(task.exemplar_ids):
        raise UserError(f"--shots {shots}: task '{task.name}' has only {len(task.exemplar_ids)} fixed exemplars")
    examples, exemplars = load_examples(task)
    examples = examples[: settings.limit] if settings.limit else examples
    exemplars = exemplars[:shots]
    path = output / f"{task.name}.jsonl"
    done = {}
    rank, world = world_info()
    if path.exists():  # resume: keep the complete records, drop a line torn by a kill
        done = {_key(r): r for r in read_jsonl(path)}
        _barrier()  # every rank has read it before rank 0 rewrites it
        if rank == 0:
            with atomic_write(path) as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in done.values())
    templates = {t.id: t for t in task.templates}
    variants = _variants(task, settings)
    todo = [(t, p, ex) for t, p in variants for ex in examples if (t, p, ex.id) not in done]
    score = _likelihood if task.method == "likelihood" else _generate
    start = time.time()
    with tqdm(total=len(variants) * len(examples), initial=len(variants) * len(examples) - len(todo),
              desc=task.name, unit="ex", disable=rank != 0) as bar:
        for t, p in variants:
            pending = [ex for tt, pp, ex in todo if (tt, pp) == (t, p)]
            for i in range(0, len(pending), CHUNK * world):
                chunk = pending[i : i + CHUNK * world]
                scored = _scored_in_parallel(lambda part: score(task, templates[t], part, exemplars, p, model, tok, settings, max_len, bar), chunk, bar)
                for ex, rec in zip(chunk, scored):
                    rec = {"id": ex.id, "template": t, "permutation": p, "shots": shots, **rec}
                    if rank == 0:
                        append_jsonl(path, rec)
                    done[_key(rec)] = rec
    cf = {}
    if task.classification and task.method == "likelihood":
        for t in {v[0] for v in variants}:
            cf[t] = _content_free_logprobs(task, templates[t], exemplars, model, tok, settings, max_len)
    wanted = {(t, p, ex.id) for t, p in variants for ex in examples}
    records = [r for k, r in done.items() if k in wanted]
    summary = _summarize(task, records, shots, settings, cf)
    summary["seconds"] = round(time.time() - start, 2)
    summary["examples_per_s"] = round(len(todo) / max(1e-9, time.time() - start), 2) if todo else None
    return summary


def _content_free_logprobs(task, template, exemplars, model, tok, settings, max_len) -> list[float]:
    """Per-label log-likelihoods for the content-free input (every text field replaced by "N/A")."""
    ex = Example(id="content-free", vars={k: R.CONTENT_FREE for k in task.fields}, gold=0, choices=task.choices)
    prompt = render(task, template, ex, exemplars)
    enc = [L.encode_pair(tok, prompt, c, max_len, settings.truncate) for c in task.choices]
    return [s["logprob"] for s in L.score(model, enc, batch_tokens=settings.batch_tokens, pad_id=tok.pad_id)]


def summary_markdown(results: dict) -> str:
    """The held-out view: per task and metric, the spread over prompt templates and over choice
    orders (mean ± standard error over the variants, [min, max]) before the single-run score (the
    first template, original order, ± its sampling standard error), then calibration and position bias."""
    lines = [f"## Evaluation of `{results['model']['dir']}` (config {results['model']['config_hash']})", "",
             "Spread first: each score over prompt templates and over choice orders (mean ± s.e. over the variants, "
             "[min, max]), then the first template in the original order (± s.e. over examples).", "",
             "| task | metric | over templates | over choice orders | first template | score | ± s.e. | n | shots |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    extra, single = [], False
    for name, r in results["tasks"].items():
        for m, v in r["metrics"].items():
            over_t, over_p = "1 (--templates all)", "1 (--permute-choices N)"
            if "template_spread" in r and m in r["template_spread"]:
                over_t = _variant_cell(r["template_spread"][m], r.get("template_stderr", {}).get(m), len(r["templates"]))
            p = r.get("permutations")
            if p:  # choice orders are scored for the task's primary metric
                over_p = _variant_cell(p, p.get("stderr"), p["n_orders"]) if p["metric"] == m else "—"
            elif not r.get("has_choices", r["method"] == "likelihood"):
                over_p = "—"
            single |= "--" in over_t + over_p
            lines.append(f"| {name} | {m} | {over_t} | {over_p} | {r['template']} | {v:.4f} | "
                         f"{r['stderr'].get(m, float('nan')):.4f} | {r['n']} | {r['shots']} |")
        if "permutations" in r:
            p = r["permutations"]
            bias = ", ".join(f"{b:.2f}" for b in p["position_bias"])
            extra.append(f"- {name} position bias over {p['n_orders']} choice orders (share of predictions per shown position): [{bias}]")
        if "calibration" in r:
            c = r["calibration"]
            extra.append(f"- {name} calibration: acc {c['uncalibrated']['acc']:.4f} (ECE {c['uncalibrated']['ece']:.3f}), "
                         f"contextual {c['contextual']['acc']:.4f} (ECE {c['contextual']['ece']:.3f}), "
                         f"batch {c['batch']['acc']:.4f} (ECE {c['batch']['ece']:.3f})")
    if single:
        lines += ["", "A cell reading 1 was scored with one variant only: rerun with the flag it names to see the spread."]
    if extra:
        lines += ["", "Robustness:", *extra]
    return "\n".join(lines) + "\n"


def _variant_cell(s: dict, se: float | None, k: int) -> str:
    se_text = "" if se is None or se != se else f" ± {se:.4f}"
    return f"{s['mean']:.4f}{se_text} [{s['min']:.4f}, {s['max']:.4f}] (k={k})"
