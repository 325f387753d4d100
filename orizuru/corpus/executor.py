"""Run one function over a list of arguments: in-process, on a local process pool, or as Ray tasks.

Every executor returns results in argument order, so the build's outputs do not depend on which
worker finished first. Functions must be top-level (picklable) and take one argument.

Progress: one bar per call, advanced as tasks finish by each task's size (`sizes`: its documents,
or its input bytes when documents are not known yet), so the rate and ETA are in documents (or
bytes) per second, never in tasks; `count(result)` adds a documents/s figure to a bytes bar.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable

from tqdm import tqdm

MapFn = Callable[..., list]


def make_map(executor: str = "local", workers: int = 1) -> MapFn:
    """map_fn(fn, args, desc=None, sizes=None, unit="task", count=None) -> results in argument order."""
    if executor not in ("local", "ray"):
        raise ValueError(f"unknown executor {executor!r}")

    def map_fn(fn: Callable, args, desc: str | None = None, sizes: list[int] | None = None,
               unit: str = "task", count: Callable | None = None) -> list:
        args = list(args)
        with Progress(desc, sizes if sizes is not None else [1] * len(args), unit, count) as progress:
            if executor == "ray":
                return _ray_map(fn, args, workers, progress)
            return _local_map(fn, args, workers, progress)

    map_fn.progress = True  # dedup_shards passes desc/sizes/unit to map functions that draw their own bar
    return map_fn


class Progress:
    """A tqdm bar over task sizes (disabled without a description or with nothing to do)."""

    def __init__(self, desc: str | None, sizes: list[int], unit: str, count: Callable | None) -> None:
        self.sizes, self.count, self.docs, self.start = sizes, count, 0, time.perf_counter()
        self.bar = tqdm(total=sum(sizes), desc=desc, unit=unit, unit_scale=unit == "B", file=sys.stderr,
                        disable=desc is None or not sizes, dynamic_ncols=True)

    def done(self, index: int, result) -> None:
        self.bar.update(self.sizes[index])
        if self.count is not None:
            self.docs += self.count(result)
            self.bar.set_postfix_str(f"{self.docs:,} docs, {self.docs / max(1e-9, time.perf_counter() - self.start):,.0f} docs/s")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _local_map(fn: Callable, args: list, workers: int, progress: Progress) -> list:
    results: list = [None] * len(args)
    if workers <= 1 or len(args) <= 1:
        for i, a in enumerate(args):
            results[i] = fn(a)
            progress.done(i, results[i])
        return results
    with ProcessPoolExecutor(max_workers=min(workers, len(args))) as pool:
        futures = {pool.submit(fn, a): i for i, a in enumerate(args)}
        for fut in as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            progress.done(i, results[i])
    return results


def _ray_map(fn: Callable, args: list, workers: int, progress: Progress) -> list:
    """Ray tasks; joins the cluster in RAY_ADDRESS (`ray start`) or starts a local instance."""
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
    task = ray.remote(num_cpus=1)(fn)
    refs = [task.remote(a) for a in args]
    index = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            progress.done(index[ref], ray.get(ref))
    return ray.get(refs)
