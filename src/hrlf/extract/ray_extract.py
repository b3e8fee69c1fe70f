"""Clips as Ray tasks: ``hrlf extract --media ... --engine ray`` (docs/scaling.md).

Every clip still to extract is one Ray task of one CPU; it writes the clip's part file into ``<out>.parts/`` itself
(so the media folder and the output's folder must be on storage every node sees under the same path), which is
what makes an interrupted cluster extraction resume like a local one. Each Ray worker process loads the extractor
models once, on its first clip, with one torch thread, as a ``--workers`` process does; so the parts, and the
feature file made from them, are the same byte for byte. A clip whose worker dies is retried by Ray; one that
still fails is listed as skipped (a rerun retries it), as with a local worker that died.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from hrlf.engine.ray_engine import MAX_RETRIES, cancel_tasks, deferred_interrupt, enter_folder, ray_session

log = logging.getLogger(__name__)

_EXTRACTORS: dict[str, Any] = {}  # per Ray worker process: the loaded extractor of each settings


def _clip(cfg: Any, job: tuple[str, str, str, str, str], cwd: str) -> tuple[str, str | None, str]:
    """In a Ray worker: one clip to its part file; returns (sample_id, error or None, node)."""
    import ray
    import torch

    from hrlf.extract import pipeline

    enter_folder(cwd)
    key = json.dumps(asdict(cfg), sort_keys=True)
    if key not in _EXTRACTORS:
        torch.set_num_threads(1)
        _EXTRACTORS[key] = pipeline.Extractor(cfg, threads=1)
    pipeline._WORKER = _EXTRACTORS[key]
    sample_id, error = pipeline._work(job)
    context = ray.get_runtime_context()
    return sample_id, error, f"{ray.util.get_node_ip_address()} ({context.get_node_id()[:8]})"


def ray_jobs(
    todo: Sequence[tuple[str, str, str, str, str]],
    *,
    cfg: Any,
    address: str | None,
    bar: Any,
    skipped: dict[str, str],
) -> dict[str, int]:
    """Extract the ``todo`` clips as Ray tasks; failed clips go into ``skipped``. Returns clips per node."""
    nodes: Counter[str] = Counter()
    with ray_session(address) as ray:
        task = ray.remote(_clip).options(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)
        cwd = os.getcwd()
        pending = {task.remote(cfg, job, cwd): job[0] for job in todo}
        log.info("extract: %d clips submitted to Ray", len(pending))
        with deferred_interrupt() as interrupt:
            try:
                while pending:
                    interrupt.check()
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # Ctrl-C acted on within 1 s
                    for ref in ready:
                        sample_id = pending.pop(ref)
                        try:
                            _, error, node = ray.get(ref)
                        except ray.exceptions.RayTaskError as exc:  # a setup error (package, model): stops the run
                            cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else None
                            raise (cause or exc) from None
                        except ray.exceptions.RayError as exc:  # its worker died once too often
                            skipped[sample_id] = (
                                f"a Ray worker died while extracting ({type(exc).__name__}; rerun to retry)"
                            )
                        else:
                            nodes[node] += 1
                            if error:
                                skipped[sample_id] = error
                        bar.update(1)
            finally:
                if pending:  # an error or Ctrl-C: stop the others (finished parts are kept)
                    cancel_tasks(ray, list(pending))
    return dict(sorted(nodes.items()))
