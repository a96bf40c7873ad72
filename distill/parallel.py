"""Train independent models side by side on a CPU.

A training step of these small models does not scale across cores: on this project's 2-core CI
machine a default-preset teacher trains only ~1.25x faster on 2 threads than on 1, while two
1-thread trainings run side by side finish ~1.5x sooner than the same two one after the other
(measured: 27 s each side by side vs 20.6 s each on 2 threads). The stages that train several
independent models (the teacher stage: fusion baselines, teacher, its ablation; the distill stage:
the students) hand them to :func:`run_jobs`, which runs them in worker processes (forked on Linux,
spawned elsewhere), each with ``cores // workers`` torch threads; a test checks that the reports
are the same as one model after the other.

Only on a CPU and outside ``torchrun`` (a GPU or a DDP group already has its own parallelism);
``EDGE_REC_JOBS=1`` (or ``jobs=1``) keeps everything in-process.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Sequence

from edge_rec.errors import ConfigError


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                     # macOS, Windows
        return os.cpu_count() or 1


def auto_workers(n_jobs: int, device: str = "auto", jobs: int | None = None) -> int:
    """How many worker processes to use for ``n_jobs`` independent trainings (1 = in-process).

    ``jobs``: the caller's choice (None: ``EDGE_REC_JOBS`` or automatic: one per core, at most
    ``n_jobs``, on a CPU only)."""
    if jobs is None and os.environ.get("EDGE_REC_JOBS"):
        try:
            jobs = int(os.environ["EDGE_REC_JOBS"])
        except ValueError:
            raise ConfigError(f"EDGE_REC_JOBS={os.environ['EDGE_REC_JOBS']!r} is not an integer.") from None
    if jobs is not None and jobs < 1:
        raise ConfigError(f"jobs={jobs} must be >= 1.")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 or n_jobs < 2:
        return 1
    if device != "cpu":
        import torch

        mps = getattr(torch.backends, "mps", None)
        if device != "auto" or torch.cuda.is_available() or (mps is not None and mps.is_available()):
            return 1                            # an accelerator trains one model at a time
    limit = cpu_count() if jobs is None else jobs
    return max(1, min(n_jobs, limit))


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# A forked worker inherits the jobs from its parent's memory, so only an index travels through the
# pipe (a dataset or a teacher cache of hundreds of MB is not pickled once per job).
_FORKED: tuple[Callable[..., Any], Sequence[tuple]] | None = None


def _run_forked(i: int) -> Any:
    assert _FORKED is not None, "a forked worker lost its jobs"
    fn, jobs = _FORKED
    return fn(*jobs[i])


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int, *, desc: str = "jobs",
             progress: bool = True, start_method: str | None = None) -> list[Any]:
    """``[fn(*args) for args in jobs]``, in ``workers`` processes when ``workers > 1``.

    Give the longest jobs first: they start first. The results travel back through a pipe (keep them
    small: metrics, scores; weights go through the run folders). Forked workers (Linux) inherit the
    jobs; spawned ones (elsewhere) receive them pickled, so there ``fn`` must be a module-level
    function, its arguments picklable, and the calling script needs ``if __name__ == "__main__":``.
    ``start_method`` ("fork" or "spawn") overrides that choice."""
    if workers <= 1:
        return [fn(*args) for args in jobs]
    threads = max(1, cpu_count() // workers)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"{desc} ({workers} processes x {threads} thread{'s' * (threads > 1)})",
                   unit="model")
    results: list[Any] = [None] * len(jobs)
    # fork on Linux: no re-import of the caller's script (spawn re-runs an unguarded one) and nothing
    # to rebuild or pickle; a child runs torch on its own ``threads`` (set by the initializer), never
    # on its parent's thread pool. Elsewhere fork is unsafe (macOS) or missing: spawn.
    global _FORKED
    fork = (start_method or ("fork" if sys.platform.startswith("linux") else "spawn")) == "fork"
    ctx = multiprocessing.get_context("fork" if fork else "spawn")
    if fork:
        _FORKED = (fn, jobs)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        pending: dict[Future, int] = {(pool.submit(_run_forked, i) if fork else pool.submit(fn, *args)): i
                                      for i, args in enumerate(jobs)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    results[pending.pop(fut)] = fut.result()      # re-raises the worker's error here
                    if bar is not None:
                        bar.update(1)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
        finally:
            _FORKED = None
            if bar is not None:
                bar.close()
    return results
