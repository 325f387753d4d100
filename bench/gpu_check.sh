#!/usr/bin/env bash
# The GPU figures of issue 18 in one call: every step under its own timeout, none able to stop the
# rest, all written to one JSON file (per step its figures, or {"skipped": "reason"}).
#
#   bench/gpu_check.sh [OUT.json]          default: $OUT/gpu_check.json, else ./gpu_check.json
#
# Steps: model (the shared 82M model directory and token shards, bench/bench_model.py);
# mfu_compiled, mfu_uncompiled, mfu_activation_checkpointing (bench/bench_mfu.py, seq 1024 bf16);
# bf16_logits (bench/bench_bf16.py: ours vs transformers, SDPA kernel); fsdp2_resume
# (bench/bench_fsdp.py: orizuru pretrain train.fsdp=true on a tiny config, SIGKILL, resume); eval_vs_lm_eval
# (bench/bench_eval.py on the GPU; needs lm-eval); serve (bench/bench_serve.py at concurrency 1/16/64).
#
# Environment: PYTHON (default python3); GPU_CHECK_BUDGET seconds for everything (default 450, so
# a second try fits in a 10-minute call); GPU_CHECK_TINY=1 for test sizes (the CPU test);
# LM_EVAL_PYTHON, a python that imports lm_eval (default $PYTHON). Packages the GPU image lacks
# (tomli-w; lm-eval and its needs) travel as wheels in .whl/ (see the device notes): when .whl/
# holds any, they are installed into a scratch folder first.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
RESULT="${1:-${OUT:-.}/gpu_check.json}"
BUDGET="${GPU_CHECK_BUDGET:-450}"
TINY="${GPU_CHECK_TINY:-0}"
LM_EVAL_PYTHON="${LM_EVAL_PYTHON:-$PY}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" .whl/*.whl > "$WORK/wheels.log" 2>&1 \
    && export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi

STEPS=()
# step NAME LIMIT CMD...: run CMD under min(LIMIT, what is left of the budget); stdout, stderr, exit code and seconds kept
step() {
  local name=$1 limit=$2
  shift 2
  STEPS+=("$name")
  local left=$((DEADLINE - $(date +%s)))
  if ((left < 5)); then
    echo "time budget of ${BUDGET}s spent before this step" > "$WORK/$name.skip"
    return
  fi
  ((limit > left)) && limit=$left
  echo "== $name (up to ${limit}s)" >&2
  local t0=$(date +%s%N)
  timeout -k 10 "$limit" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" < /dev/null
  echo $? > "$WORK/$name.rc"
  echo "$limit" > "$WORK/$name.limit"
  echo $((($(date +%s%N) - t0) / 1000000)) > "$WORK/$name.ms"
}
skip() {  # skip NAME REASON
  STEPS+=("$1")
  echo "$2" > "$WORK/$1.skip"
}

if [ "$TINY" = 1 ]; then
  SIZE=tiny MFU=(--batch 2 --seq 64 --steps 2 --warmup 1) BF16=(--batch 2 --seq 64) FSDP=(--steps 6) EVAL=(--n 5 --threads 1)
  SERVE=(--concurrency 1 4 --threads 1)
else
  SIZE=small MFU=(--batch 16 --seq 1024 --steps 30 --warmup 5) BF16=(--batch 4 --seq 1024) FSDP=(--steps 40) EVAL=(--n 200 --threads 8)
  SERVE=(--concurrency 1 16 64)
fi
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2> /dev/null || echo 0)
if [ "$CUDA" = 1 ]; then EVAL+=(--device cuda --dtype bfloat16); fi

step model 150 "$PY" bench/bench_model.py "$WORK/bench" --size "$SIZE"
MODEL="$WORK/bench/model"
VOCAB=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$MODEL/config.json" 2> /dev/null || echo 0)

step mfu_compiled 180 "$PY" bench/bench_mfu.py "${MFU[@]}"
step mfu_uncompiled 60 "$PY" bench/bench_mfu.py "${MFU[@]}" --no-compile
step mfu_activation_checkpointing 90 "$PY" bench/bench_mfu.py "${MFU[@]}" --no-compile --activation-checkpointing
step bf16_logits 90 "$PY" bench/bench_bf16.py --model "$MODEL" "${BF16[@]}"
step fsdp2_resume 150 "$PY" bench/bench_fsdp.py --data "$WORK/bench/data" --vocab-size "$VOCAB" --size tiny --work "$WORK/fsdp" "${FSDP[@]}"
if "$LM_EVAL_PYTHON" -c "import lm_eval" > /dev/null 2>&1; then
  step eval_vs_lm_eval 150 "$PY" bench/bench_eval.py --model "$MODEL" --lm-eval-python "$LM_EVAL_PYTHON" "${EVAL[@]}"
else
  skip eval_vs_lm_eval "lm-eval is not importable by $LM_EVAL_PYTHON (set LM_EVAL_PYTHON, or carry its wheels in .whl/)"
fi
if [ -f bench/bench_serve.py ]; then
  step serve 180 "$PY" bench/bench_serve.py --model "$MODEL" "${SERVE[@]}"
else
  skip serve "bench/bench_serve.py not present"
fi

"$PY" - "$WORK" "$RESULT" "$START" "$BUDGET" "$TINY" "${STEPS[@]}" << 'EOF'
"""Gather each step's last JSON output (or the reason it has none) into one file."""
import json, os, platform, sys, time
from pathlib import Path

work, result, start, budget, tiny, names = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1", sys.argv[6:]


def read(name, ext):
    p = work / f"{name}.{ext}"
    return p.read_text(errors="replace").strip() if p.exists() else None


def figures(text):
    """The step's JSON: its whole output, else its last line that parses."""
    try:
        return json.loads(text)
    except ValueError:
        for line in reversed(text.splitlines()):
            try:
                out = json.loads(line)
                if isinstance(out, dict):
                    return out
            except ValueError:
                continue
    return None


steps = {}
for name in names:
    if (reason := read(name, "skip")) is not None:
        steps[name] = {"skipped": reason}
        continue
    rc, err, limit = int(read(name, "rc")), read(name, "err") or "", read(name, "limit")
    out = figures(read(name, "out") or "")
    if rc in (124, 137):
        entry = {"skipped": f"timed out after {limit}s"}
    elif rc != 0:
        last = next((line for line in reversed(err.splitlines()) if line.strip()), "")
        entry = {"skipped": f"failed (exit {rc}): {last[:300]}"}
    elif not isinstance(out, dict):
        entry = {"skipped": "printed no JSON"}
    else:
        entry = out
    if "skipped" in entry and rc != 0:
        entry["log_tail"] = err[-2000:]
    entry["step_seconds"] = round(int(read(name, "ms")) / 1000, 1)
    steps[name] = entry

try:
    import torch
    env = {"torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
except Exception as e:  # the JSON is written whatever broke
    env = {"torch": None, "cuda": None, "torch_error": str(e)}
report = {"host": platform.node(), "python": platform.python_version(), **env, "tiny": tiny, "budget_s": budget,
          "total_s": round(time.time() - start, 1), "steps": steps}
result.parent.mkdir(parents=True, exist_ok=True)
tmp = result.with_name(result.name + ".tmp")
tmp.write_text(json.dumps(report, indent=2) + "\n")
os.replace(tmp, result)
print(json.dumps({name: ("skipped: " + s["skipped"]) if "skipped" in s else "ok" for name, s in steps.items()}, indent=1))
EOF
rm -rf "$WORK"
