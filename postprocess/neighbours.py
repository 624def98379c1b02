"""Top-k nearest real neighbours of each generated sample, by exact L2 search in FAISS.

FAISS runs on the GPU when its GPU build is installed and a GPU is visible, on the CPU otherwise. The
search space is whatever features the caller passes (flattened pixels or latents, or encoder features).
"""
from __future__ import annotations

import numpy as np
import torch


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


def top_k(queries: torch.Tensor, database: torch.Tensor, k: int, chunk: int = 8192,
          use_gpu: bool | None = None) -> torch.Tensor:
    """Indices (N, k) into `database` of each query's k nearest rows (exact L2), nearest first."""
    q, db = as_features(queries), as_features(database)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} features, the database {db.shape[1]}: search both in one space")
    if not 1 <= k <= db.shape[0]:
        raise ValueError(f"k = {k} needs 1 ≤ k ≤ the number of real samples ({db.shape[0]})")
    faiss = _faiss()
    index = faiss.IndexFlatL2(db.shape[1])
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus and use_gpu is not False:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(db)
    parts = [index.search(q[i:i + chunk], k)[1] for i in range(0, q.shape[0], chunk)]
    return torch.from_numpy(np.concatenate(parts).astype(np.int64))
