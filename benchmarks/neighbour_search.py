"""Neighbour search for the flow refiner at scale: exact (flat) vs IVF, recall and time, up to 1 M vectors.

    python3 scripts/host.py run-python benchmarks/neighbour_search.py [--quick] [--sizes 100000 1000000]
        [--queries 10000] [--dim 64] [--k 20] [--out benchmarks/results/neighbour_search.json]

Synthetic reference sets shaped like encoder features: a Gaussian mixture (256 anisotropic components,
each with its own orientation and a decaying spectrum, see `mixture`) in 64 dimensions; queries are fresh
draws from the same mixture (generated samples near the data). Per size: the exact search (IndexFlatL2,
the ground truth); IVF indexes (nlist = √N, the default, and FAISS's usual 4·√N; k-means on 40·nlist rows)
swept over nprobe with the top-k recall against the exact result and the build and search times; and
`postprocess.neighbours.search` end to end ("auto": the index it picks, nprobe calibrated on 512 of the
queries to 95 % recall; build included). CPU FAISS, all cores. `--quick` (the smoke test) is one
20,000-vector set in 32 dimensions, searched with index="ivf" end to end, and writes nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from guidekit.postprocess import neighbours

REPO = Path(__file__).resolve().parent.parent


def mixture(n: int, dim: int, seed: int, components: int = 256) -> np.ndarray:
    """n draws of a fixed Gaussian mixture shaped like encoder features: `components` clusters with unit-normal
    centres, each with its own random orientation, a decaying spectrum (std ∝ 1/√(i+1) along its i-th axis:
    a low effective dimension) and an overall spread between 0.3 and 0.9. The mixture depends only on
    `components` and `dim`; `seed` picks the draws."""
    shape = np.random.default_rng(components * 1009 + dim)
    centres = shape.standard_normal((components, dim)).astype(np.float32)
    decay = 1.0 / np.sqrt(np.arange(1, dim + 1, dtype=np.float32))
    spread = (0.3 + 0.6 * shape.random(components)).astype(np.float32)
    axes = np.stack([np.linalg.qr(shape.standard_normal((dim, dim)))[0] for _ in range(components)]).astype(np.float32)
    axes *= (spread[:, None, None] * decay[None, :, None] * np.sqrt(dim / (decay ** 2).sum()))
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):                 # in blocks: the noise never doubles the memory
        label = rng.integers(components, size=min(100_000, n - start))
        noise = rng.standard_normal((label.size, dim), dtype=np.float32)
        block = centres[label].copy()
        for c in np.unique(label):
            rows = label == c
            block[rows] += noise[rows] @ axes[c]
        out[start:start + label.size] = block
    return out


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_size(n: int, queries: int, dim: int, k: int, quick: bool) -> list[dict]:
    import faiss
    db, q = mixture(n, dim, 0), mixture(queries, dim, 1)
    rows = []
    exact, flat_s = timed(lambda: faiss.knn(q, db, k)[1])
    rows.append({"n": n, "dim": dim, "queries": queries, "k": k, "index": "flat", "nlist": 0, "nprobe": 0,
                 "recall": 1.0, "build_s": 0.0, "search_s": flat_s, "ms_per_query": 1e3 * flat_s / queries})
    print(f"N {n:>9,}  flat                 recall 1.000  search {flat_s:7.2f} s", flush=True)
    for factor in (1, 4):                                     # the default √N and FAISS's usual 4·√N
        nlist = min(round(factor * math.sqrt(n)), n // 39)
        ivf, build_s = timed(lambda: neighbours.build_ivf(db, nlist))
        probe, recall = 1, 0.0
        while probe <= min(nlist, 512) and recall < 0.99:    # doubling until 99 % recall
            ivf.nprobe = probe
            found, search_s = timed(lambda: ivf.search(q, k)[1])
            recall = neighbours.recall_at_k(found, exact)
            rows.append({"n": n, "dim": dim, "queries": queries, "k": k, "index": "ivf", "nlist": nlist,
                         "nprobe": probe, "recall": recall, "build_s": build_s, "search_s": search_s,
                         "ms_per_query": 1e3 * search_s / queries, "speedup_vs_flat": flat_s / search_s,
                         "speedup_vs_flat_with_build": flat_s / (build_s + search_s)})
            print(f"N {n:>9,}  ivf nlist {nlist:5} nprobe {probe:4}  recall {recall:.3f}  search {search_s:7.2f} s "
                  f"({flat_s / search_s:6.1f}x flat; build {build_s:.1f} s)", flush=True)
            probe *= 2
    index = "ivf" if quick else "auto"                        # quick: the IVF path below its size threshold
    result, total_s = timed(lambda: neighbours.search(torch.from_numpy(q), torch.from_numpy(db), k, index=index))
    recall = neighbours.recall_at_k(result.indices.numpy(), exact)
    rows.append({"n": n, "dim": dim, "queries": queries, "k": k, "index": f"search {index} ({result.index})",
                 "nlist": result.nlist, "nprobe": result.nprobe, "recall": recall,
                 "calibrated_recall": result.recall, "build_s": None, "search_s": total_s,
                 "ms_per_query": 1e3 * total_s / queries, "speedup_vs_flat": flat_s / total_s})
    print(f"N {n:>9,}  {index} → {result.index:4} nprobe {result.nprobe:4}  recall {recall:.3f} (calibrated "
          f"{result.recall:.3f})  build+calibrate+search {total_s:7.2f} s ({flat_s / total_s:5.1f}x flat)", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: one 20,000-vector set, nothing written")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "neighbour_search.json")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.queries, args.dim = [20_000], 1_000, 32
    rows = []
    for n in args.sizes:
        rows += bench_size(n, args.queries, args.dim, args.k, args.quick)
    if args.quick:
        print("quick run: results not written")
        return
    import faiss
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "neighbour_search", "faiss": faiss.__version__, "device": "cpu", "cores": os.cpu_count(),
        "load_average_at_start": LOAD, "machine": platform.processor() or platform.machine(),
        "data": "Gaussian mixture, 256 components, unit-normal centres, random orientations, std ∝ 1/√(i+1) "
                "along axis i, overall spreads 0.3-0.9 (see mixture())",
        "recall": "top-k recall against the exact search over all queries", "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


LOAD = os.getloadavg()

if __name__ == "__main__":
    main()
