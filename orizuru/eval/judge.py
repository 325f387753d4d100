"""`orizuru judge`: LLM-as-a-judge on Rakuda and Japanese MT-Bench.

1. Answers: each `--model` answers the questions (MT-Bench: two turns, the second sees the first
   answer), with the model's chat template when its tokenizer has one. Cached in
   OUT/answers/<name>.jsonl, resumable.
2. Single grading: the judge (any OpenAI-compatible endpoint, via the `openai` client) scores
   each answer 1-10 with Japanese MT-Bench's prompt and "[[rating]]" output; math, reasoning and
   coding questions get the reference-guided prompt with the reference answer.
3. Pairwise (two or more models): every pair is judged in both orders (position bias); a win
   counts only when both orders agree, anything else is a tie. Win rates and Bradley-Terry
   strengths (ties count half a win each way) summarise them.

Every judge call is cached on disk (OUT/judgments.jsonl, keyed by a hash of judge model + messages),
so a rerun costs nothing and an interrupted run resumes. Calls retry with exponential backoff
under a concurrency limit; an answer the judge gives without a parsable verdict is counted as
unparsable and reported, never dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from orizuru.config import parse_command
from orizuru.errors import UserError
from orizuru.eval.tasks import DATA_DIR, read_rows
from orizuru.files import append_jsonl, read_jsonl, write_json
from orizuru.model.checkpoint import load_model
from orizuru.model.generate import generate
from orizuru.runtime import inference_device
from orizuru.tokenizer.tokenizer import END, Tokenizer

REFERENCE_CATEGORIES = {"math", "reasoning", "coding"}
PAIR_PROMPT = (
    "[指示]\n公平な判断者として行動し、以下に表示されるユーザーの質問に対する2つのAIアシスタントの応答の品質を評価してください。"
    "ユーザーの指示に従い、質問により良く答えている方を選んでください。応答の有用性、関連性、正確性、深さ、創造性、詳細度を考慮してください。"
    "回答の順序や長さ、アシスタントの名前に判断を左右されないでください。できるだけ客観的であること。"
    "短い説明の後、次の形式で最終判断を出力してください：アシスタントAが良い場合は\"[[A]]\"、"
    "アシスタントBが良い場合は\"[[B]]\"、引き分けの場合は\"[[C]]\"。\n\n"
    "[ユーザーの質問]\n{question}\n\n[アシスタントAの回答の開始]\n{answer_a}\n[アシスタントAの回答の終了]\n\n"
    "[アシスタントBの回答の開始]\n{answer_b}\n[アシスタントBの回答の終了]"
)


@dataclass
class Question:
    id: str
    category: str
    turns: list[str]
    reference: list[str] | None = None


def load_bench(name: str, data_dir: Path = DATA_DIR) -> list[Question]:
    if name == "rakuda":
        rows = read_rows(data_dir / "rakuda" / "questions.jsonl")
        return [Question(str(r["id"]), r["category"], [r["question"]]) for r in rows]
    if name == "mt-bench":
        base = data_dir / "japanese_mt_bench"
        refs = {r["question_id"]: r["choices"][0]["turns"]
                for r in read_rows(base / "reference_answer" / "base-gpt4o-with-human-annotation.jsonl")}
        return [Question(str(r["question_id"]), r["category"], list(r["turns"]),
                         refs.get(r["question_id"]) if r["category"] in REFERENCE_CATEGORIES else None)
                for r in read_rows(base / "question.jsonl")]
    raise UserError(f"unknown benchmark '{name}' (known: rakuda, mt-bench)")


def judge_prompts(data_dir: Path = DATA_DIR) -> dict[str, dict]:
    return {r["name"]: r for r in read_rows(data_dir / "japanese_mt_bench" / "judge_ja_prompts.jsonl")}


# ---------------------------------------------------------------- answers


def chat_text(model_dir: Path, messages: list[dict], tok: Tokenizer) -> str:
    """The model's own chat template (tokenizer_config.json) if it has one, else a plain Q/A format."""
    cfg_path = model_dir / "tokenizer_config.json"
    template = json.loads(cfg_path.read_text()).get("chat_template") if cfg_path.is_file() else None
    if template:
        import jinja2

        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token=tok.bos_token, eos_token=tok.eos_token)
    parts = [f"{'質問' if m['role'] == 'user' else '回答'}：{m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\n回答："


def generate_answers(model_dir: Path, questions: list[Question], path: Path, max_new_tokens: int,
                     device: str = "auto", dtype: str = "auto") -> dict[str, list[str]]:
    """Answers per question id (all turns), appended to `path` as they are produced."""
    done = {r["id"]: r["turns"] for r in read_jsonl(path)} if path.exists() else {}
    todo = [q for q in questions if q.id not in done]
    if todo:
        tok = Tokenizer.load(model_dir)
        dev, dt = inference_device(device, dtype)
        model = load_model(model_dir, device=dev, dtype=dt).eval()
        stop_ids = [tok.eos_id] + ([tok.token_id(END)] if tok.hf.token_to_id(END) is not None else [])
        path.parent.mkdir(parents=True, exist_ok=True)
        for q in tqdm(todo, desc=f"answers {model_dir.name}", unit="q"):
            messages, answers = [], []
            for turn in q.turns:
                messages.append({"role": "user", "content": turn})
                ids, _ = tok.encode_prompt(chat_text(model_dir, messages, tok), model.cfg.max_seq_len - max_new_tokens)
                answer = tok.decode(generate(model, [ids], max_new_tokens, eos_id=stop_ids)[0]).strip()
                messages.append({"role": "assistant", "content": answer})
                answers.append(answer)
            append_jsonl(path, {"id": q.id, "model": str(model_dir), "turns": answers})
            done[q.id] = answers
    return done


# ---------------------------------------------------------------- judge client


class Judge:
    """OpenAI-compatible chat client with retries, a concurrency limit and an on-disk cache."""

    def __init__(self, base_url: str, model: str, cache: Path, api_key: str | None = None, *,
                 retries: int = 4, backoff: float = 1.0, concurrency: int = 4, timeout: float = 60.0):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout)
        self.model, self.base_url, self.cache_path = model, base_url, cache
        self.retries, self.backoff, self.concurrency = retries, backoff, concurrency
        self.cache = {r["key"]: r["content"] for r in read_jsonl(cache)} if cache.exists() else {}
        self.lock = threading.Lock()
        self.calls = 0

    def key(self, messages: list[dict]) -> str:
        return hashlib.sha256(json.dumps([self.model, messages], ensure_ascii=False).encode()).hexdigest()

    def ask(self, messages: list[dict]) -> str:
        key = self.key(messages)
        if key in self.cache:
            return self.cache[key]
        error = None
        for attempt in range(self.retries + 1):
            try:
                reply = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0.0, max_tokens=1024)
                content = reply.choices[0].message.content or ""
                break
            except Exception as e:  # connection errors, 5xx, malformed replies: retry
                error = e
                if attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt)
        else:
            raise UserError(f"judge endpoint {self.base_url} failed after {self.retries + 1} tries: {type(error).__name__}: {error}")
        with self.lock:
            self.calls += 1
            self.cache[key] = content
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.cache_path, {"key": key, "content": content})
        return content

    def map(self, prompts: list[list[dict]], desc: str) -> list[str]:
        with ThreadPoolExecutor(self.concurrency) as pool, tqdm(total=len(prompts), desc=desc, unit="judgment") as bar:
            futures = [pool.submit(self.ask, p) for p in prompts]
            out = []
            for f in futures:
                out.append(f.result())
                bar.update(1)
            return out


_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_rating(text: str) -> float | None:
    """The last "[[n]]" with 1 <= n <= 10, else None (unparsable)."""
    found = _RATING.findall(text)
    if not found:
        return None
    value = float(found[-1])
    return value if 1 <= value <= 10 else None


def parse_verdict(text: str) -> str | None:
    found = _VERDICT.findall(text)
    return found[-1] if found else None


# ---------------------------------------------------------------- grading


def _turn_question(q: Question, turn: int, answers: list[str]) -> str:
    """Turn 1: the question. Turn 2: the first exchange, then the follow-up question."""
    if turn == 0:
        return q.turns[0]
    return f"{q.turns[0]}\n\n[アシスタントの最初の回答]\n{answers[0]}\n\n[ユーザーの2番目の質問]\n{q.turns[turn]}"


def single_prompts(questions: list[Question], answers: dict[str, list[str]], prompts: dict) -> list[tuple[str, int, list[dict]]]:
    out = []
    for q in questions:
        for t in range(len(q.turns)):
            p = prompts["single-math-v1"] if q.reference else prompts["single-v1"]
            fields = {"question": _turn_question(q, t, answers[q.id]), "answer": answers[q.id][t]}
            if q.reference:
                fields["ref_answer_1"] = q.reference[t]
            messages = [{"role": "system", "content": p["system_prompt"]},
                        {"role": "user", "content": p["prompt_template"].format(**fields)}]
            out.append((q.id, t, messages))
    return out


def grade_single(judge: Judge, questions, answers, prompts) -> dict:
    items = single_prompts(questions, answers, prompts)
    replies = judge.map([m for _, _, m in items], "single")
    ratings = [parse_rating(r) for r in replies]
    valid = [r for r in ratings if r is not None]
    by_cat: dict[str, list[float]] = {}
    cats = {q.id: q.category for q in questions}
    for (qid, _, _), r in zip(items, ratings):
        if r is not None:
            by_cat.setdefault(cats[qid], []).append(r)
    return {
        "mean": sum(valid) / len(valid) if valid else None,
        "n": len(items), "unparsable": len(items) - len(valid),
        "by_category": {c: sum(v) / len(v) for c, v in sorted(by_cat.items())},
        "judgments": [{"id": qid, "turn": t, "rating": r, "reply": rep} for (qid, t, _), r, rep in zip(items, ratings, replies)],
    }


def _conversation(turns: list[str], t: int) -> str:
    """The answer to judge at turn t; from turn 2 on, preceded by the model's own earlier answers."""
    if t == 0:
        return turns[0]
    earlier = "\n\n".join(f"[{i + 1}番目の質問への回答]\n{a}" for i, a in enumerate(turns[:t]))
    return f"{earlier}\n\n[{t + 1}番目の質問への回答]\n{turns[t]}"


def grade_pairwise(judge: Judge, questions, answers: dict[str, dict[str, list[str]]]) -> dict:
    """All model pairs, both orders; a win needs both orders to agree."""
    names = list(answers)
    items = []
    for a, b in combinations(names, 2):
        for q in questions:
            for t in range(len(q.turns)):
                # turn 2: each model saw its own first answer, so the judge sees each whole conversation
                question = q.turns[0] if t == 0 else f"{q.turns[0]}\n\n[ユーザーの2番目の質問]\n{q.turns[t]}"
                for first, second in ((a, b), (b, a)):
                    text = PAIR_PROMPT.format(question=question, answer_a=_conversation(answers[first][q.id], t),
                                              answer_b=_conversation(answers[second][q.id], t))
                    items.append((a, b, q.id, t, first, [{"role": "user", "content": text}]))
    replies = judge.map([m for *_, m in items], "pairwise")
    verdicts = [parse_verdict(r) for r in replies]
    outcomes, unparsable = [], sum(v is None for v in verdicts)
    for i in range(0, len(items), 2):
        a, b, qid, t, _, _ = items[i]
        v1, v2 = verdicts[i], verdicts[i + 1]  # order (a, b), then (b, a)
        winner = None
        if v1 == "A" and v2 == "B":
            winner = a
        elif v1 == "B" and v2 == "A":
            winner = b
        outcomes.append({"a": a, "b": b, "id": qid, "turn": t, "winner": winner,
                         "verdicts": [v1, v2], "consistent": (v1, v2) in {("A", "B"), ("B", "A"), ("C", "C")}})
    wins = {n: 0 for n in names}
    games = {n: 0 for n in names}
    for o in outcomes:
        games[o["a"]] += 1
        games[o["b"]] += 1
        if o["winner"]:
            wins[o["winner"]] += 1
    return {
        "n_comparisons": len(outcomes), "unparsable": unparsable,
        "consistency": sum(o["consistent"] for o in outcomes) / max(1, len(outcomes)),
        "win_rate": {n: wins[n] / games[n] if games[n] else None for n in names},
        "tie_rate": sum(o["winner"] is None for o in outcomes) / max(1, len(outcomes)),
        "bradley_terry": bradley_terry(names, outcomes),
        "outcomes": outcomes,
    }


def bradley_terry(names: list[str], outcomes: list[dict], iters: int = 200) -> dict[str, float]:
    """Strengths p_i with P(i beats j) = p_i / (p_i + p_j), by Hunter's MM updates; ties count
    half a win for each side. Reported as log-strengths centred on 0 (mean over models)."""
    w = {n: 0.0 for n in names}
    n_ij: dict[tuple, float] = {}
    for o in outcomes:
        if o["winner"] is None:
            w[o["a"]] += 0.5
            w[o["b"]] += 0.5
        else:
            w[o["winner"]] += 1.0
        pair = tuple(sorted((o["a"], o["b"])))
        n_ij[pair] = n_ij.get(pair, 0) + 1
    p = {n: 1.0 for n in names}
    for _ in range(iters):
        new = {}
        for i in names:
            denom = sum(c / (p[i] + p[j]) for (x, y), c in n_ij.items() for j in ((y,) if x == i else (x,) if y == i else ()))
            new[i] = max(w[i], 1e-9) / denom if denom else p[i]
        g = math.exp(sum(math.log(v) for v in new.values()) / len(new))
        p = {n: v / g for n, v in new.items()}
    return {n: math.log(v) for n, v in p.items()}


# ---------------------------------------------------------------- command


def run(bench: str, models: list[Path], output: Path, base_url: str, judge_model: str, *, api_key: str | None = None,
        limit: int | None = None, max_new_tokens: int = 512, concurrency: int = 4, retries: int = 4, backoff: float = 1.0,
        data_dir: Path = DATA_DIR, device: str = "auto", dtype: str = "auto") -> dict:
    questions = load_bench(bench, data_dir)[:limit]
    names = [m.name if m.name != "model" else m.parent.name for m in models]
    if len(set(names)) != len(names):
        names = [f"{i}-{n}" for i, n in enumerate(names)]
    answers = {n: generate_answers(m, questions, output / "answers" / f"{n}.jsonl", max_new_tokens, device, dtype) for n, m in zip(names, models)}
    judge = Judge(base_url, judge_model, output / "judgments.jsonl", api_key, retries=retries, backoff=backoff, concurrency=concurrency)
    prompts = judge_prompts(data_dir)
    result = {"bench": bench, "judge": {"base_url": base_url, "model": judge_model}, "questions": len(questions),
              "single": {n: grade_single(judge, questions, answers[n], prompts) for n in names}}
    if len(names) > 1:
        result["pairwise"] = grade_pairwise(judge, questions, answers)
    result["judge_calls"] = judge.calls
    write_json(output / "judge.json", result)
    return result


@dataclass
class JudgeConfig:
    """`orizuru judge`: LLM-as-a-judge on Rakuda / Japanese MT-Bench."""

    bench: Literal["rakuda", "mt-bench"]
    model: list[str]  # model directories (two or more: also judged pairwise)
    output: str  # output directory (answers/, judgments.jsonl, judge.json; a rerun resumes)
    judge_url: str  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    judge_model: str  # model name the judge endpoint serves
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key
    limit: int | None = None  # only the first N questions
    max_new_tokens: int = 512  # answer length cap
    concurrency: int = 4  # judge requests at once
    retries: int = 4  # retries per judge request
    device: str = "auto"  # where the answering models run: auto|cpu|cuda|cuda:N
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # their weights' dtype (auto: bf16 on CUDA, float32 on CPU)


def main(argv: list[str]) -> int:
    a = parse_command(JudgeConfig, argv, "orizuru judge", JudgeConfig.__doc__)
    r = run(a.bench, [Path(m) for m in a.model], Path(a.output), a.judge_url, a.judge_model, api_key=os.environ.get(a.api_key_env),
            limit=a.limit, max_new_tokens=a.max_new_tokens, concurrency=a.concurrency, retries=a.retries,
            device=a.device, dtype=a.dtype)
    for name, s in r["single"].items():
        mean = "n/a" if s["mean"] is None else f"{s['mean']:.2f}"
        print(f"{name}: mean rating {mean} over {s['n']} answers ({s['unparsable']} unparsable)")
    if "pairwise" in r:
        pw = r["pairwise"]
        print(f"pairwise: win rates {pw['win_rate']}, ties {pw['tie_rate']:.2f}, Bradley-Terry {pw['bradley_terry']}, "
              f"{pw['unparsable']} unparsable")
    return 0
