"""Benchmark runs as Ray tasks: ``hrlf bench --engine ray`` on one machine or a cluster (docs/scaling.md).

Every run that is not finished yet becomes one Ray task that asks for ``threads`` CPUs and trains with that many
torch threads, exactly as a ``--jobs`` worker process does, so the numbers equal those of ``--jobs`` at the same
thread count. The task writes its run folder itself: on a cluster the benchmark folder (and the data file) must be
on storage that every node sees under the same path. Relative paths are taken from the folder the command was
started in, which must then exist on every node too.

Fault tolerance comes from the run folder: a task whose worker process or node dies is retried by Ray (up to
``max_retries`` times) and resumes from the last epoch its earlier attempt saved; the run lock knows the attempt
by its Ray task id, so the retry takes over the dead attempt's lock at once, on any node. Ctrl-C (or an error in
one run) cancels the other tasks; they keep their last finished epoch and a rerun of the same command continues.

Ray is imported only here and only when asked for; without it :class:`RayUnavailable` names the extra to install.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from hrlf.engine.bench import BenchError, PlannedRun
from hrlf.engine.run import run_experiment
from hrlf.errors import HrlfError, Terminated

log = logging.getLogger(__name__)

#: how often a run's task is tried again after its worker process or node died (Ray's default, said explicitly)
MAX_RETRIES = 3
#: seconds cancelled tasks get to stop cleanly (release their run lock) before their workers are killed
CANCEL_GRACE_SECONDS = 15.0


class RayUnavailable(HrlfError, RuntimeError):
    """``--engine ray`` without Ray installed (or a cluster that cannot be reached)."""


def import_ray() -> ModuleType:
    """The ``ray`` module, or :class:`RayUnavailable` naming the extra that installs it."""
    try:
        import ray

        if getattr(ray, "__file__", None) is None:  # a bare folder named ray (e.g. Ray's own /tmp/ray) on sys.path
            raise ImportError("namespace package")
    except ImportError:
        raise RayUnavailable(
            "--engine ray needs Ray, which is not installed: install the extra hrlf[ray] "
            "(pip install 'hrlf[ray]', or make ray in a source checkout)"
        ) from None
    return ray


class Interrupt:
    """Ctrl-C (or SIGTERM) while waiting on Ray tasks, seen by the waiting loop rather than raised wherever the
    signal lands.

    Inside the block the first SIGINT or SIGTERM only records itself in :attr:`requested`; the loop calls
    :meth:`check` between its ``ray.wait`` calls and so raises ``KeyboardInterrupt`` (:class:`~hrlf.errors.Terminated`
    for SIGTERM) from its own code, never from inside one of Ray's calls (where an exception can leave the driver's
    connection half-used, and the cancelling and ``ray.shutdown`` that follow can then hang, and where Ray may turn
    it into a plain ``KeyboardInterrupt``). A second signal raises at once, wherever it lands: the way out when
    stopping cleanly takes too long. Outside the main thread (where Python cannot take signals) the block changes
    nothing.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signum: int | None = None

    def check(self) -> None:
        """``KeyboardInterrupt`` (``Terminated`` for SIGTERM) if a signal came since the block began."""
        if self.requested.is_set():
            raise Terminated if self.signum == signal.SIGTERM else KeyboardInterrupt

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002 (the signal module's signature)
        if self.requested.is_set():
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        self.signum = signum
        self.requested.set()
        log.info("%s: cancelling the Ray tasks (Ctrl-C again to stop at once)", signal.Signals(signum).name)


@contextmanager
def deferred_interrupt() -> Iterator[Interrupt]:
    """A block in which SIGINT and SIGTERM are :class:`Interrupt` requests, the previous handlers restored after
    (one that is ignored on entry stays ignored, as Python itself leaves SIGINT when it starts with it ignored)."""
    interrupt = Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield interrupt
        return
    # a signal the command was started with ignored (SIGINT in a background job of a script) stays ignored
    taken = [signum for signum in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(signum) != signal.SIG_IGN]
    previous = {signum: signal.signal(signum, interrupt._handle) for signum in taken}
    try:
        yield interrupt
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(signum, handler)


@contextmanager
def ray_session(address: str | None = None) -> Iterator[ModuleType]:
    """Connected to Ray for the duration of the block: the cluster at ``address`` (``auto``: the one ``ray start``
    started on this machine; ``HOST:PORT``: its head), else a private one-machine Ray started for the block.

    A session the caller opened already (``ray.init`` in a notebook or test) is used as it is and left open.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise RayUnavailable(f"cannot connect to {where} ({type(exc).__name__}: {exc})") from None
    finally:
        if sigterm is not None:  # ray.init makes SIGTERM a bare sys.exit; the command's own handling comes back
            signal.signal(signal.SIGTERM, sigterm)
    try:
        yield ray
    finally:
        ray.shutdown()


def enter_folder(cwd: str) -> None:
    """In a Ray worker: work in ``cwd``, the folder the command was started in (relative paths mean it)."""
    if os.getcwd() == cwd:
        return
    try:
        os.chdir(cwd)
    except OSError as exc:
        import ray

        raise BenchError(
            f"{cwd} (the folder the command was started in) is not there on node {ray.util.get_node_ip_address()}: "
            f"use absolute paths on storage that every node sees ({exc.strerror or exc})"
        ) from None


def _train(run: PlannedRun, threads: int, cwd: str) -> tuple[dict[str, Any], str]:
    """In a Ray worker: one run with ``threads`` torch threads; returns its results and the node it ran on."""
    import ray
    import torch

    enter_folder(cwd)
    torch.set_num_threads(threads)
    cfg = dataclasses.replace(run.cfg, train=dataclasses.replace(run.cfg.train, progress=False))
    context = ray.get_runtime_context()
    # the task id stays the same across Ray's retries: a retry takes over the lock of its dead earlier attempt
    results = run_experiment(
        cfg, run_dir=run.run_dir, resume=True, label=run.label, lock_owner=f"ray-task-{context.get_task_id()}"
    )
    return results, ray.util.get_node_ip_address()


def run_bench_ray(
    plan: Sequence[PlannedRun],
    *,
    threads: int = 1,
    gpus: float = 0.0,
    address: str | None = None,
    max_retries: int = MAX_RETRIES,
    on_done: Callable[[PlannedRun, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Like :func:`hrlf.engine.bench.run_bench`, every unfinished run a Ray task of ``threads`` CPUs (and ``gpus``
    GPUs: Ray gives the task its devices through ``CUDA_VISIBLE_DEVICES``, and the run's ``train.device=cuda``
    uses the first of them).

    Finished runs are reused in this process. Returns the results in plan order.

    Raises:
        RayUnavailable: Ray is not installed or the cluster cannot be reached.
        BenchError: the cluster has fewer GPUs than one run asks for (said at once, not left waiting), or a run's
            task failed for good (its worker died more than ``max_retries`` times); finished runs
            and the others' last epochs are kept.
        Exception: the first error a run raised (its own type, e.g. a DataFileError), after cancelling the rest.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0, got {gpus}")
    results: dict[int, dict[str, Any]] = {}
    todo = []
    for i, run in enumerate(plan):
        if run.done:
            results[i] = run_experiment(run.cfg, run_dir=run.run_dir, resume=True, label=run.label)
            if on_done:
                on_done(run, results[i])
        else:
            todo.append(i)
    if todo:
        with ray_session(address) as ray:
            if gpus:
                have = float(ray.cluster_resources().get("GPU", 0.0))
                if have < gpus:
                    raise BenchError(
                        f"--gpus {gpus:g} per run, but the Ray cluster has {have:g} GPUs: no run could start "
                        "(start the nodes with their GPUs, e.g. ray start --num-gpus N, or lower --gpus)"
                    )
            _run_tasks(ray, plan, todo, results, threads=threads, gpus=gpus, max_retries=max_retries, on_done=on_done)
    return [results[i] for i in range(len(plan))]


def _run_tasks(
    ray: ModuleType,
    plan: Sequence[PlannedRun],
    todo: list[int],
    results: dict[int, dict[str, Any]],
    *,
    threads: int,
    gpus: float,
    max_retries: int,
    on_done: Callable[[PlannedRun, dict[str, Any]], None] | None,
) -> None:
    train = ray.remote(_train).options(num_cpus=threads, num_gpus=gpus, max_retries=max_retries, retry_exceptions=False)
    cwd = os.getcwd()
    pending = {train.remote(plan[i], threads, cwd): i for i in todo}
    log.info("bench: %d runs submitted to Ray, %d CPUs each", len(pending), threads)
    with deferred_interrupt() as interrupt:
        try:
            _collect(ray, plan, pending, results, interrupt, max_retries=max_retries, on_done=on_done)
        finally:
            if pending:  # an error or Ctrl-C: stop the others, they resume from their last epoch later
                cancel_tasks(ray, list(pending))


def _collect(
    ray: ModuleType,
    plan: Sequence[PlannedRun],
    pending: dict[Any, int],
    results: dict[int, dict[str, Any]],
    interrupt: Interrupt,
    *,
    max_retries: int,
    on_done: Callable[[PlannedRun, dict[str, Any]], None] | None,
) -> None:
    """Wait for the tasks in ``pending`` (removing each as it finishes) and store their results."""
    while pending:
        interrupt.check()
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # short waits: Ctrl-C is acted on within 1 s
        for ref in ready:
            i = pending.pop(ref)
            try:
                payload, node = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the run itself raised: the same error here
                cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else None
                raise (cause or exc) from None
            except ray.exceptions.RayError as exc:  # its worker or node died once too often, or OOM
                raise BenchError(
                    f"{plan[i].run_dir}: the Ray task died {max_retries + 1} times without a result "
                    f"({type(exc).__name__}); finished runs are kept, rerun the same command to continue"
                ) from None
            log.info("bench: %s seed %d finished on %s", plan[i].label, plan[i].cfg.train.seed, node)
            results[i] = payload
            if on_done:
                on_done(plan[i], payload)


def cancel_tasks(ray: ModuleType, refs: list[Any]) -> None:
    """Cancel tasks: first as Ctrl-C in their workers (their run locks are released), then by killing them."""
    for ref in refs:
        ray.cancel(ref)
    _, left = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_SECONDS)
    for ref in left:
        ray.cancel(ref, force=True)
