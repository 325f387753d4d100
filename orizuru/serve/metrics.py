"""Counters of the engine, rendered in Prometheus' text exposition format for `GET /metrics`."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WINDOW_S = 10.0  # tokens/s is measured over the last 10 seconds


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.finished: Counter[str] = Counter()  # requests by finish reason (stop, length, cancelled)
        self._ttft_buckets = [0] * len(TTFT_BUCKETS)
        self._ttft_sum, self._ttft_count = 0.0, 0
        self._recent: deque[float] = deque()

    def observe_ttft(self, seconds: float) -> None:
        with self._lock:
            for i, bound in enumerate(TTFT_BUCKETS):
                if seconds <= bound:
                    self._ttft_buckets[i] += 1
            self._ttft_sum += seconds
            self._ttft_count += 1

    def count_token(self, now: float) -> None:
        with self._lock:
            self.generated_tokens += 1
            self._recent.append(now)
            while self._recent and self._recent[0] < now - WINDOW_S:
                self._recent.popleft()

    def tokens_per_second(self) -> float:
        now = time.perf_counter()
        with self._lock:
            while self._recent and self._recent[0] < now - WINDOW_S:
                self._recent.popleft()
            return len(self._recent) / WINDOW_S

    def render(self, waiting: int, running: int, slots: int) -> str:
        tps = self.tokens_per_second()
        with self._lock:
            lines = [
                "# HELP orizuru_queue_length Requests waiting for a slot.",
                "# TYPE orizuru_queue_length gauge",
                f"orizuru_queue_length {waiting}",
                "# HELP orizuru_running_slots Slots holding a request (prefilling or decoding).",
                "# TYPE orizuru_running_slots gauge",
                f"orizuru_running_slots {running}",
                "# HELP orizuru_slots Slots of the engine (--max-batch).",
                "# TYPE orizuru_slots gauge",
                f"orizuru_slots {slots}",
                f"# HELP orizuru_tokens_per_second Generated tokens per second over the last {WINDOW_S:g} s.",
                "# TYPE orizuru_tokens_per_second gauge",
                f"orizuru_tokens_per_second {tps:.3f}",
                "# HELP orizuru_prompt_tokens_total Prompt tokens submitted.",
                "# TYPE orizuru_prompt_tokens_total counter",
                f"orizuru_prompt_tokens_total {self.prompt_tokens}",
                "# HELP orizuru_generation_tokens_total Tokens sampled.",
                "# TYPE orizuru_generation_tokens_total counter",
                f"orizuru_generation_tokens_total {self.generated_tokens}",
                "# HELP orizuru_requests_finished_total Requests finished, by reason.",
                "# TYPE orizuru_requests_finished_total counter",
            ]
            lines += [f'orizuru_requests_finished_total{{reason="{r}"}} {self.finished[r]}' for r in ("stop", "length", "cancelled")]
            lines += [
                "# HELP orizuru_time_to_first_token_seconds From submission to the first sampled token.",
                "# TYPE orizuru_time_to_first_token_seconds histogram",
            ]
            lines += [f'orizuru_time_to_first_token_seconds_bucket{{le="{b:g}"}} {n}' for b, n in zip(TTFT_BUCKETS, self._ttft_buckets)]
            lines += [
                f'orizuru_time_to_first_token_seconds_bucket{{le="+Inf"}} {self._ttft_count}',
                f"orizuru_time_to_first_token_seconds_sum {self._ttft_sum:.6f}",
                f"orizuru_time_to_first_token_seconds_count {self._ttft_count}",
            ]
        return "\n".join(lines) + "\n"
