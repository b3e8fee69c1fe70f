"""Many runs (models x seeds) in one benchmark folder, in this process or in parallel worker processes.

Every run is one :func:`hrlf.engine.run.run_experiment` call in its own directory, so a benchmark resumes
like a single run: finished runs are reused (when their config and data fingerprint match), an interrupted
run continues from its last finished epoch.

With ``jobs > 1`` each run trains in a spawned worker process with ``threads`` torch threads (default: the
process's threads divided by ``jobs``). On a 2-core machine two one-thread runs side by side finish a
benchmark of small models about 1.5x sooner than one two-thread run after the other, because these models keep
two threads only partly busy (docs/performance.md). Results depend on the seed and on the thread count: float
reductions are split differently, training follows another path and single runs differ about as much as two
seeds do. A benchmark is reproduced exactly by the same command on the same machine.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import yaml

from hrlf.config import ExperimentCfg, load_config, to_dict
from hrlf.engine.run import check_run_config, run_experiment, same_config
from hrlf.engine.trainer import resolve_device
from hrlf.errors import HrlfError

log = logging.getLogger(__name__)


class BenchError(HrlfError, RuntimeError):
    """A worker process died without a result (killed, out of memory); finished runs are kept."""


@dataclass(frozen=True)
class PlannedRun:
    label: str  # name in reports, ``model`` or ``model:recipe``
    cfg: ExperimentCfg
    run_dir: Path

    @property
    def done(self) -> bool:
        """Finished with this configuration (a finished run resumed with more epochs is not done)."""
        if not (self.run_dir / "results.json").is_file():
            return False
        try:
            saved = yaml.safe_load((self.run_dir / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return False
        return same_config(saved, to_dict(self.cfg))


def plan_bench(
    entries: Sequence[tuple[str, Path]],
    *,
    seeds: Sequence[int],
    data: str | Path,
    out: str | Path,
    overrides: Sequence[str] = (),
) -> list[PlannedRun]:
    """Every (entry, seed) run with its resolved config, checked before any training starts.

    ``entries`` are ``(label, recipe path)`` pairs. A config error in the last recipe, or a run folder left
    by a different configuration, is reported now instead of after hours of training.
    """
    plan = []
    for label, recipe in entries:
        for seed in seeds:
            cfg = load_config(recipe, [*overrides, f"data.path={data}", f"train.seed={seed}"])
            resolve_device(cfg.train.device)
            run_dir = Path(out) / "runs" / label.replace(":", "-") / f"seed{seed}"
            check_run_config(run_dir, to_dict(cfg), resume=True)  # every bench run resumes
            plan.append(PlannedRun(label=label, cfg=cfg, run_dir=run_dir))
    return plan


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one: a container's or taskset's
    limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_jobs(runs: int, cpus: int | None = None) -> int:
    """``--jobs auto``: one run per core, at most one per planned run. One-thread runs side by side use a small
    model's cores better than one run with all threads (docs/performance.md: two one-thread runs 1.5x faster than
    one two-thread run on the 2-core machine), and counting every planned run (finished or not) keeps a run's
    thread count, and so its numbers, the same when a bench is resumed with fewer runs left."""
    return max(1, min(runs, usable_cpus() if cpus is None else cpus))


def run_bench(
    plan: Sequence[PlannedRun],
    *,
    jobs: int = 1,
    threads: int | None = None,
    on_done: Callable[[PlannedRun, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run (or reuse) every planned run; returns their results in plan order.

    ``on_done`` is called in this process after each run finishes (for progress output). An error in one run
    stops the others (each keeps its last finished epoch) and is raised here.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    results: dict[int, dict[str, Any]] = {}
    # runs to train in worker processes (even a lone one: its thread count, and so its numbers, must not depend on
    # how many runs were left); finished runs (reused) and everything when jobs == 1 run in this process
    parallel = [i for i, run in enumerate(plan) if not run.done] if jobs > 1 else []
    for i, run in enumerate(plan):
        if i not in parallel:
            log.info("bench: %s seed %d", run.label, run.cfg.train.seed)
            results[i] = run_experiment(run.cfg, run_dir=run.run_dir, resume=True, label=run.label)
            if on_done:
                on_done(run, results[i])
    if parallel:
        import torch

        per_job = threads or max(1, torch.get_num_threads() // jobs)
        _run_parallel(plan, parallel, results, jobs=jobs, threads=per_job, on_done=on_done)
    return [results[i] for i in range(len(plan))]


def die_with_parent(parent: int) -> None:
    """In a worker process: be sent SIGTERM when the process ``parent`` ends, however it ends (even by SIGKILL),
    so that no worker trains on, holding its run lock, after the command that started it is gone (Linux; elsewhere
    the parent's own clean-up, on Ctrl-C, SIGTERM or an error, is what stops the workers)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl to be found: the parent's clean-up still applies
        return
    if os.getppid() != parent:  # the parent ended before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(run: PlannedRun, threads: int, conn: Connection, parent: int) -> None:
    """In a spawned process: one run, its outcome sent back as ("ok", results) or ("error", exception)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the workers itself
    die_with_parent(parent)
    import torch

    torch.set_num_threads(threads)
    cfg = dataclasses.replace(run.cfg, train=dataclasses.replace(run.cfg.train, progress=False))
    try:
        conn.send(("ok", run_experiment(cfg, run_dir=run.run_dir, resume=True, label=run.label)))
    except Exception as exc:  # handed to the parent, which raises it (user errors keep their one-line form)
        try:
            conn.send(("error", exc))
        except Exception:  # an exception that cannot be pickled: its text with the traceback
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")))
    finally:
        conn.close()


def _run_parallel(
    plan: Sequence[PlannedRun],
    todo: list[int],
    results: dict[int, dict[str, Any]],
    *,
    jobs: int,
    threads: int,
    on_done: Callable[[PlannedRun, dict[str, Any]], None] | None,
) -> None:
    ctx = get_context("spawn")
    waiting = list(todo)
    running: dict[Connection, tuple[int, Any]] = {}
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                i = waiting.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                # not a daemon: a run may start its own DataLoader workers
                process = ctx.Process(target=_worker, args=(plan[i], threads, send, os.getpid()), name=f"bench-{i}")
                process.start()
                send.close()  # the child holds the only writer: its exit without a message reads as EOF
                running[receive] = (i, process)
                log.info("bench: %s seed %d started (pid %d)", plan[i].label, plan[i].cfg.train.seed, process.pid)
            for conn in wait(list(running)):
                assert isinstance(conn, Connection)
                i, process = running.pop(conn)
                try:
                    status, payload = conn.recv()
                except EOFError:
                    status, payload = "died", None
                conn.close()
                process.join()
                if status == "ok":
                    results[i] = payload
                    if on_done:
                        on_done(plan[i], payload)
                elif status == "error":
                    raise payload
                else:
                    raise BenchError(
                        f"{plan[i].run_dir}: the worker process died (exit code {process.exitcode}) without a "
                        "result; finished runs are kept, rerun the same command to continue"
                    )
    finally:
        for _, process in running.values():  # an error or Ctrl-C: stop the others, they resume later
            process.terminate()
        for _, process in running.values():
            process.join()
