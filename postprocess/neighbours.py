"""Top-k nearest real neighbours of each generated sample, by L2 search in FAISS: exact, or IVF for large sets.

Below `IVF_FROM` real samples the search is exact (IndexFlatL2). From there on (or with index="ivf") it is an
inverted-file index (IndexIVFFlat: k-means into nlist ≈ √N cells, each query scans the nprobe nearest
cells) whose nprobe is calibrated on a sample of the actual queries: the smallest nprobe (doubling, then
bisection) whose top-k recall against the exact search reaches `target_recall` (0.95 by default). FAISS
runs on the GPUs when its GPU build is installed and GPUs are visible, the database sharded across them
when there are several; on the CPU otherwise. The search space is whatever features the caller passes
(flattened pixels or latents, or encoder features).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

INDEXES = ("auto", "flat", "ivf")
IVF_FROM = 100_000          # "auto": exact search below this many real samples, IVF from here on
CALIBRATION_QUERIES = 512   # queries whose exact neighbours calibrate nprobe
GPU_MAX_NPROBE = 2048       # FAISS's GPU IVF limit


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError("the flow refiner's neighbour search needs FAISS: pip install faiss-cpu "
                          "(or faiss-gpu)") from e
    return faiss


def as_features(x: torch.Tensor) -> np.ndarray:
    """(N, ...) → contiguous float32 (N, D), what FAISS indexes."""
    return np.ascontiguousarray(x.detach().reshape(x.shape[0], -1).float().cpu().numpy())


@dataclass
class Search:
    """The neighbours and how they were found."""
    indices: torch.Tensor             # (N, k) int64 into the database, nearest first
    index: str                        # "flat" or "ivf"
    nlist: int = 0                    # IVF cells
    nprobe: int = 0                   # cells scanned per query
    recall: float = 1.0               # top-k recall against the exact search on the calibration queries
    gpus: int = 0


def ivf_nlist(n: int) -> int:
    """Cells for n vectors: √n, at least 1, at most n / 39 (FAISS's minimum k-means points per cell).

    The index serves one batch of queries and is dropped, so its build counts: k-means and assignment cost
    ∝ nlist (k-means on 40·nlist rows ∝ nlist²) while a query scans nlist centroids + nprobe·N/nlist rows, least
    at nlist ≈ √N. FAISS's 4-16·√N suits an index built once for many queries; on 1 M vectors (64-d) √N built
    in 7 s against 50 s for 4·√N, with the same query time at 95 % recall (benchmarks/neighbour_search.py)."""
    return max(1, min(round(math.sqrt(n)), n // 39))


def build_ivf(db: np.ndarray, nlist: int, seed: int = 0):
    """IndexIVFFlat over db (float32 (N, D)): k-means (10 iterations) on at most 40·nlist rows, then every row added."""
    faiss = _faiss()
    quantizer = faiss.IndexFlatL2(db.shape[1])
    ivf = faiss.IndexIVFFlat(quantizer, db.shape[1], nlist)
    ivf.cp.niter, ivf.cp.seed = 10, seed
    rng = np.random.default_rng(seed)
    train = db if db.shape[0] <= 40 * nlist else db[np.sort(rng.choice(db.shape[0], 40 * nlist, replace=False))]
    ivf.train(train)
    ivf.add(db)
    return ivf


def _to_gpus(faiss, index, gpus: int):
    if gpus > 1:
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True          # each GPU holds 1/gpus of the database
        return faiss.index_cpu_to_all_gpus(index, options)
    return faiss.index_cpu_to_all_gpus(index)


def _search(index, q: np.ndarray, k: int, chunk: int) -> np.ndarray:
    parts = [index.search(q[i:i + chunk], k)[1] for i in range(0, q.shape[0], chunk)]
    return np.concatenate(parts)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / k (top-k recall)."""
    k = exact.shape[1]
    hits = sum(len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact))
    return hits / (k * exact.shape[0])


def search(queries: torch.Tensor, database: torch.Tensor, k: int, chunk: int = 8192, use_gpu: bool | None = None,
           index: str = "auto", target_recall: float = 0.95, nprobe: int | None = None, nlist: int | None = None,
           seed: int = 0) -> Search:
    """Each query's k nearest database rows (L2): exact below IVF_FROM rows ("auto"), IVF above (see the module)."""
    if index not in INDEXES:
        raise ValueError(f"index must be one of {INDEXES}, got {index!r}")
    q, db = as_features(queries), as_features(database)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} features, the database {db.shape[1]}: search both in one space")
    if not 1 <= k <= db.shape[0]:
        raise ValueError(f"k = {k} needs 1 ≤ k ≤ the number of real samples ({db.shape[0]})")
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    faiss = _faiss()
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") and use_gpu is not False else 0
    if index == "flat" or (index == "auto" and db.shape[0] < IVF_FROM):
        flat = faiss.IndexFlatL2(db.shape[1])
        flat = _to_gpus(faiss, flat, gpus) if gpus else flat
        flat.add(db)
        return Search(torch.from_numpy(_search(flat, q, k, chunk).astype(np.int64)), "flat", gpus=gpus)

    cells = nlist or ivf_nlist(db.shape[0])
    ivf = build_ivf(db, cells, seed)
    searcher = _to_gpus(faiss, ivf, gpus) if gpus else ivf
    params = faiss.GpuParameterSpace() if gpus else faiss.ParameterSpace()
    most = min(cells, GPU_MAX_NPROBE) if gpus else cells

    rng = np.random.default_rng(seed)
    sample = q if q.shape[0] <= CALIBRATION_QUERIES else q[rng.choice(q.shape[0], CALIBRATION_QUERIES, replace=False)]
    exact = faiss.knn(sample, db, k)[1]

    def recall_with(p: int) -> float:
        params.set_index_parameter(searcher, "nprobe", p)
        return recall_at_k(_search(searcher, sample, k, chunk), exact)

    if nprobe is not None:
        probe = min(nprobe, most)
        got = recall_with(probe)
    else:                         # double nprobe until the target is met, then bisect back to the smallest
        probe = 1
        while (got := recall_with(probe)) < target_recall and probe < most:
            probe = min(2 * probe, most)
        low = probe // 2              # recall_with(low) < target (or low = 0)
        while got >= target_recall and probe - low > 1:
            mid = (low + probe) // 2
            if (r := recall_with(mid)) >= target_recall:
                probe, got = mid, r
            else:
                low = mid
    params.set_index_parameter(searcher, "nprobe", probe)
    found = _search(searcher, q, k, chunk)
    short = np.flatnonzero((found < 0).any(axis=1))      # probed cells held fewer than k rows: search exactly
    if short.size:
        found[short] = faiss.knn(np.ascontiguousarray(q[short]), db, k)[1]
    return Search(torch.from_numpy(found.astype(np.int64)), "ivf", cells, probe, got, gpus)


def top_k(queries: torch.Tensor, database: torch.Tensor, k: int, chunk: int = 8192,
          use_gpu: bool | None = None, index: str = "auto", target_recall: float = 0.95) -> torch.Tensor:
    """Indices (N, k) into `database` of each query's k nearest rows, nearest first (exact below IVF_FROM rows)."""
    return search(queries, database, k, chunk, use_gpu, index, target_recall).indices
