"""Training throughput: lamost-rrnet's member shards vs a plain loop over members.

The plain loop is the published code's way: one ``nn.Module`` per member, trained one after
another with its own Adam (PyTorch's conv1d and nn.RNN). Ours is
:class:`lamost_rrnet.training.members.Shard`: members stacked into one batched computation.
"One stack of M" is what ``train`` runs for a label group on one device; "N stacks in
threads" is what it runs for N groups (the paper's two) or for ``--devices cpu,cpu``. Same
architecture, batch size, loss and optimizer; random z-scored spectra in memory (the data do
not change the cost).

Prints samples per second (member-samples: M members × spectra) for each layout, interleaved
over several rounds (best round quoted), and the ratios to the plain loop with the same
number of torch threads (and, for reference, to the plain loop on one thread).

    python benchmarks/bench_train.py [--members 2] [--threads 2] [--batches 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from lamost_rrnet.ensemble import Normalization
from lamost_rrnet.models import create_model
from lamost_rrnet.spectra.preprocess import RRNET2022
from lamost_rrnet.training.augment import BatchAugmenter
from lamost_rrnet.training.data import SplitData
from lamost_rrnet.training.members import Recipe, Shard, gaussian_nll


def plain_loop(x: torch.Tensor, y: torch.Tensor, members: int, batch: int, threads: int) -> float:
    """Members one after another; each one's first batch (warm-up) is not timed."""
    torch.set_num_threads(threads)
    elapsed = 0.0
    for m in range(members):
        torch.manual_seed(m)
        model = create_model("rrnet", y.shape[1]).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
        for i in range(0, x.shape[0] + batch, batch):
            start = time.perf_counter()
            j = i % x.shape[0]
            mu, var = model(x[j : j + batch])
            loss = gaussian_nll(mu[None], var[None], y[None, j : j + batch], 1e-6).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i:
                elapsed += time.perf_counter() - start
    return members * x.shape[0] / elapsed


def shards(
    x: np.ndarray, y: np.ndarray, members: int, n_shards: int, batch: int, threads: int
) -> float:
    """``n_shards`` stacks of members/n_shards members each, concurrently, for one epoch,
    after an untimed warm-up epoch of one batch."""
    recipe = Recipe(batch_size=batch, noise_prob=0.0)
    parts = np.array_split(np.arange(members), n_shards)
    torch.set_num_threads(max(1, threads // n_shards))
    work = [Shard("SP", y.shape[1], list(p), "rrnet", {}, 0, torch.device("cpu")) for p in parts]
    std = np.ones(y.shape[1])
    identity = Normalization(np.zeros(7200), np.ones(7200), ["a"], np.zeros(1), np.ones(1))
    augment = BatchAugmenter(recipe, identity, RRNET2022, None)

    def epoch(n: int):
        flux = {"train": x[:n], "valid": x[:2]}
        rows = {
            "train": SplitData(np.arange(n), y[:n], 0),
            "valid": SplitData(np.arange(2), y[:2], 0),
        }
        with ThreadPoolExecutor(n_shards) as pool:
            list(
                pool.map(
                    lambda s: s.run_epoch(1, recipe, flux, rows, std, lambda k: None, augment), work
                )
            )

    epoch(batch)
    start = time.perf_counter()
    epoch(x.shape[0])
    return members * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per member and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.batch * args.batches
    x = rng.standard_normal((n, 7200), dtype=np.float32)
    y = rng.standard_normal((n, 3), dtype=np.float32)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    layouts = {
        f"plain loop, {args.threads} thread(s)": lambda: plain_loop(
            xt, yt, args.members, args.batch, args.threads
        ),
        f"one stack of {args.members}, {args.threads} thread(s)": lambda: shards(
            x, y, args.members, 1, args.batch, args.threads
        ),
    }
    n_shards = min(args.members, args.threads)
    if args.threads > 1:
        # On a busy machine, intra-op threads can hurt the plain loop: show it on one too.
        layouts["plain loop, 1 thread"] = lambda: plain_loop(xt, yt, args.members, args.batch, 1)
    if n_shards > 1:
        layouts[f"{n_shards} stacks in threads, 1 thread each"] = lambda: shards(
            x, y, args.members, n_shards, args.batch, args.threads
        )
    best: dict[str, float] = {}
    for r in range(args.rounds):
        for name, run in layouts.items():
            best[name] = max(best.get(name, 0.0), run())
        print(f"round {r + 1}: " + "; ".join(f"{k}: {v:.1f}/s" for k, v in best.items()))
    base = best[next(iter(layouts))]
    one = best.get("plain loop, 1 thread", base)
    print(f"\nRRNet, {args.members} members, batch {args.batch}, {args.threads} torch threads")
    print(f"{'layout':55s} {'samples/s':>10s}  vs plain  vs plain 1 thread")
    for name, value in best.items():
        print(f"{name:55s} {value:10.1f}  {value / base:7.2f}x  {value / one:7.2f}x")


if __name__ == "__main__":
    main()
