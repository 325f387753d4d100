"""`orizuru serve`: the OpenAI-compatible server (uvicorn) over a model directory."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from orizuru.config import ConfigError, parse_command
from orizuru.errors import UserError


@dataclass
class ServeConfig:
    """`orizuru serve`: an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models),
    /health, /metrics and a chat page at /, with continuous batching."""

    model: str  # model directory (config.json, safetensors, tokenizer.json)
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16  # slots: requests decoded together
    max_seq_len: int | None = None  # context per slot (default: the model's)
    prefill_chunk: int = 256  # prompt tokens folded into one engine step
    max_queue: int = 256  # waiting requests beyond this get 503
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # auto, float32 or bfloat16 (auto: bf16 on CUDA, float32 on the CPU)
    threads: int | None = None  # CPU threads for torch (default: torch's choice; 1 is fastest for tiny models on busy machines)
    api_key: str | None = None  # require 'Authorization: Bearer KEY' on /v1
    served_model_name: str | None = None  # the model id clients send (default: the directory's name)

    def validate(self) -> None:
        if self.max_batch < 1 or self.prefill_chunk < 1 or self.max_queue < 1:
            raise ConfigError("--max-batch, --prefill-chunk and --max-queue must be >= 1")
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise ConfigError("--max-seq-len must be >= 2")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("--threads must be >= 1")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"--dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be in 1..65535, got {self.port}")


def main(argv: list[str]) -> int:
    cfg = parse_command(ServeConfig, argv, "orizuru serve", ServeConfig.__doc__)
    if not (Path(cfg.model) / "config.json").is_file():
        raise UserError(f"{cfg.model}: not a model directory (no config.json)")
    import uvicorn

    from orizuru.serve.app import create_app
    from orizuru.serve.engine import Engine

    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    name = cfg.served_model_name or Path(cfg.model).resolve().name

    def load() -> Engine:
        return Engine.from_dir(cfg.model, device=cfg.device, dtype=cfg.dtype, max_batch=cfg.max_batch,
                               max_seq_len=cfg.max_seq_len, prefill_chunk=cfg.prefill_chunk, max_queue=cfg.max_queue)  # fmt: skip

    app = create_app(load, name=name, api_key=cfg.api_key)
    print(f"orizuru serve: {name} on http://{cfg.host}:{cfg.port} (OpenAI base URL http://{cfg.host}:{cfg.port}/v1)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0
