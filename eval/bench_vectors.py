"""What reading a list's candidates' vectors costs while writes sit in the index's delta.

    python eval/bench_vectors.py --main 100000 --deltas 0 10000 50000

A list reads its few hundred candidates' vectors several times (`reconstruct`, `has`).
After a bulk import, the new articles sit in the exact delta beside the main index
until the next save folds them in, and many candidates are among them. This builds a
`VectorIndex` of --main random vectors, adds each --deltas more to the delta, and
times `reconstruct` + `has` of 300 random stored nums (the share in the delta is the
delta's share of the index): ms per call pair, averaged over --calls.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from recommender.index.vector_index import VectorIndex


def per_call_ms(main: int, delta: int, calls: int, dimension: int = 384) -> float:
    rng = np.random.default_rng(0)
    index = VectorIndex(dimension)
    index.COMPACT_AT = main + delta + 1  # the writes stay in the delta, as between two saves
    index.upsert(np.arange(main), rng.normal(size=(main, dimension)).astype(np.float32))
    index.compact()
    if delta:
        index.upsert(np.arange(main, main + delta), rng.normal(size=(delta, dimension)).astype(np.float32))
    asks = [rng.choice(main + delta, 300, replace=False) for _ in range(calls)]
    index.reconstruct(asks[0])
    index.has(asks[0])
    started = time.perf_counter()
    for nums in asks:
        index.reconstruct(nums)
        index.has(nums)
    return (time.perf_counter() - started) / calls * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--main", type=int, default=100_000, help="vectors in the main index")
    parser.add_argument("--deltas", type=int, nargs="+", default=[0, 10_000, 50_000], help="vectors in the delta")
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    for delta in args.deltas:
        print(f"main {args.main:,}, delta {delta:,}: {per_call_ms(args.main, delta, args.calls):.2f} ms "
              "per reconstruct + has of 300 nums", flush=True)


if __name__ == "__main__":
    main()
