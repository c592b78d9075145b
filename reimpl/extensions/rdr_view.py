"""RDR's qualitative evaluation (seed 000 §2.2): do a student's sequence representations group the way its rows'
rationales do?

For the train rows that have a rationale: the rationales' MiniLM vectors ``[M, 384]`` are clustered by k-means
(``k`` clusters, seeded; the rationale cluster of a row), the student's representations ``h [M, D]`` (the input of
its output layer, eval mode) are measured against those labels, and a t-SNE of ``h`` (sklearn, seeded) of at most
``max_points`` rows is kept for the figure:

* ``silhouette``: the cosine silhouette of ``h`` under the rationale labels (``-1..1``; 0 is no grouping);
* ``knn_agree``: the fraction of each row's 10 nearest neighbours in ``h`` (cosine) that share its label, against
  ``knn_chance = sum_k p_k^2`` (the same fraction for labels drawn at their frequencies).

The view is a compact dict stored in a record (``rdr_view``), so the report draws the figure without weights.
"""

from __future__ import annotations

import numpy as np
import torch


def rationale_labels(vectors: np.ndarray, k: int = 8, seed: int = 0) -> np.ndarray:
    """``[M]`` k-means cluster of each rationale vector (``[M, D]``, unit norm: euclidean k-means is cosine)."""
    from sklearn.cluster import KMeans

    if vectors.ndim != 2 or len(vectors) < k:
        raise ValueError(f"rationale_labels: need [M >= k={k}, D] vectors, got {vectors.shape}")
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(vectors.astype(np.float64))


def knn_agreement(h: np.ndarray, labels: np.ndarray, n_neighbors: int = 10) -> float:
    """Mean over rows of the fraction of its ``n_neighbors`` nearest rows (cosine, itself excluded) with its label."""
    x = h / np.linalg.norm(h, axis=1, keepdims=True).clip(1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argpartition(-sim, n_neighbors, axis=1)[:, :n_neighbors]
    return float((labels[nn] == labels[:, None]).mean())


def rationale_view(h: np.ndarray, vectors: np.ndarray, k: int = 8, max_points: int = 1500, seed: int = 0) -> dict:
    """The view of one student (module docstring). h ``[M, D]``, vectors ``[M, 384]`` of the same rows."""
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score

    if h.shape[0] != vectors.shape[0]:
        raise ValueError(f"rationale_view: {h.shape[0]} representations but {vectors.shape[0]} rationale vectors")
    labels = rationale_labels(vectors, k, seed)
    p = np.bincount(labels, minlength=k) / len(labels)
    pick = np.sort(np.random.default_rng(seed).choice(len(h), min(max_points, len(h)), replace=False))
    xy = TSNE(n_components=2, metric="cosine", init="pca", random_state=seed,
              perplexity=min(30.0, (len(pick) - 1) / 3)).fit_transform(h[pick].astype(np.float64))
    return {"k": k, "rows": int(len(h)), "silhouette": float(silhouette_score(h, labels, metric="cosine")),
            "knn_agree": knn_agreement(h, labels), "knn_chance": float((p ** 2).sum()),
            "cluster_sizes": np.bincount(labels, minlength=k).tolist(),
            "points": {"xy": np.round(xy, 3).tolist(), "label": labels[pick].tolist()}}


@torch.no_grad()
def student_view(model, data, ed_weight: float, store_dir, **kw) -> dict:
    """:func:`rationale_view` of a trained student on the train rows of the vector store in ``store_dir``."""
    from reimpl.engine import forward
    from reimpl.extensions.rdr import load_vector_store

    vec, has = load_vector_store(store_dir, len(data.train_next))
    rows = has.nonzero().flatten()
    table = None if ed_weight == 0 or data.llm_table is None else \
        forward.trim_table(forward.extend_table(data.llm_table))
    was = model.training
    model.eval()
    try:
        seq = torch.as_tensor(np.asarray(data.train_seq)[rows.numpy()], dtype=torch.long)
        lens = torch.as_tensor(np.asarray(data.train_len)[rows.numpy()], dtype=torch.long)
        h = forward.representation(model, seq, lens, table).double().numpy()
    finally:
        model.train(was)
    return rationale_view(h, vec[rows].double().numpy(), **kw)
