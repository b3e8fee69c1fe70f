"""Time one HMI forward + backward (Eqs. 7-8) at the MOSI recipe's batch for each way of forming JSD negatives.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hmi_negatives.py [--batch 128] [--repeats 30]

Rows: ``shuffle`` (one cyclic shift, B negatives), ``all_pairs`` as shipped (first layer split, B(B-1) negatives
from a broadcast add) and ``all_pairs`` through the (B, B, 2w) grid (the same function, the previous code
path). The five scale members of the stacked E1/E2/E3 scales (widths 3d, 3d, 2d, 2d, d with d = 40), one
statistics network per scale as in ``HierarchicalMutualInformation``. Prints the median milliseconds per step.
"""

from __future__ import annotations

import argparse
import statistics as stats
import time

import torch
from torch import nn

from hrlf.models.hrlf import jsd_mi, scale_widths
from hrlf.models.layers import mlp


def _grid_version(net: nn.Sequential) -> nn.Sequential:
    """The same statistics network behind an Identity, so that the all-pairs code takes its grid path."""
    return nn.Sequential(nn.Identity(), *net)


def time_step(nets: list[nn.Module], widths: list[int], *, batch: int, negatives: str, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    members = [(w, k) for k, w in enumerate(widths) for _ in range(2 if k < 2 else 1)]  # E1, E2 two members
    xs = [torch.randn(batch, w, generator=gen, requires_grad=True) for w, _ in members]
    ys = [torch.randn(batch, w, generator=gen) for w, _ in members]
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        loss = -sum(jsd_mi(nets[k], x, y, negatives=negatives) for (_, k), x, y in zip(members, xs, ys, strict=True))
        loss.backward()
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - start)
    return 1000 * stats.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--d-model", type=int, default=40)
    args = parser.parse_args()
    torch.manual_seed(0)
    widths = scale_widths(args.d_model, merge="stack")
    nets = [mlp([2 * w, w, 1]) for w in widths]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, widths {widths}")
    rows = [
        ("shuffle (one cyclic shift)", nets, "shuffle"),
        ("all_pairs, first layer split (shipped)", nets, "all_pairs"),
        ("all_pairs, (B, B, 2w) grid (previous)", [_grid_version(n) for n in nets], "all_pairs"),
    ]
    for name, row_nets, negatives in rows:
        ms = time_step(row_nets, widths, batch=args.batch, negatives=negatives, repeats=args.repeats)
        print(f"{name:42s} {ms:8.2f} ms per HMI forward + backward")


if __name__ == "__main__":
    main()
