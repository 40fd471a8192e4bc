"""Which nearest-neighbour search should `mlkit audit` use? Times each candidate on the same features.

Synthetic clustered, non-negative features (as pooled CNN features are) with planted near duplicates
(a copy plus 2% noise). Each method finds the k = 10 nearest neighbours of every row by cosine.
Printed: seconds, recall of the planted pairs, recall@10 against exact search on 500 rows.

    python benchmarks/knn_choice.py --rows 20000 --dims 1280
"""

import argparse
import time

import numpy as np


def make_features(rows, dims, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.gamma(1.0, 1.0, size=(50, dims)).astype("float32")
    x = centres[rng.integers(0, 50, rows)] * rng.gamma(4.0, 0.25, size=(rows, dims)).astype("float32")
    planted = rng.choice(rows, size=(rows // 100, 2), replace=False)
    x[planted[:, 1]] = x[planted[:, 0]] * (1 + 0.02 * rng.standard_normal((len(planted), dims))).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x), planted


def brute_numpy(x, k, block=2048):
    out = np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(x), block):
        sims = x[start:start + block] @ x.T
        part = np.argpartition(-sims, k, axis=1)[:, : k + 1]
        order = np.take_along_axis(sims, part, 1).argsort(axis=1)[:, ::-1]
        out[start:start + block] = np.take_along_axis(part, order, 1)[:, 1:]
    return out


def faiss_flat(x, k):
    import faiss
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(x, k + 1)[1][:, 1:]


def faiss_hnsw(x, k):
    import faiss
    index = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 40
    index.add(x)
    index.hnsw.efSearch = 32
    return index.search(x, k + 1)[1][:, 1:]


def faiss_ivf(x, k):
    import faiss
    nlist = int(4 * np.sqrt(len(x)))
    quantizer = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(x[np.random.default_rng(0).permutation(len(x))[: 40 * nlist]])
    index.add(x)
    index.nprobe = 8
    return index.search(x, k + 1)[1][:, 1:]


def hnswlib_search(x, k):
    import hnswlib
    index = hnswlib.Index(space="ip", dim=x.shape[1])
    index.init_index(max_elements=len(x), ef_construction=100, M=16)
    index.set_num_threads(2)
    index.add_items(x)
    index.set_ef(32)
    return index.knn_query(x, k=k + 1)[0][:, 1:].astype(np.int64)


def pynndescent_search(x, k):
    import pynndescent
    index = pynndescent.NNDescent(x, metric="dot", n_neighbors=k + 1, n_jobs=2, random_state=0)
    return index.neighbor_graph[0][:, 1:]


METHODS = {"numpy-brute": brute_numpy, "faiss-flat": faiss_flat, "faiss-hnsw": faiss_hnsw, "faiss-ivf": faiss_ivf,
           "hnswlib": hnswlib_search, "pynndescent": pynndescent_search}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dims", type=int, default=1280)
    parser.add_argument("--only", default=",".join(METHODS))
    args = parser.parse_args()
    x, planted = make_features(args.rows, args.dims)
    sample = np.random.default_rng(1).choice(len(x), 500, replace=False)
    sims = x[sample] @ x.T
    sims[np.arange(len(sample)), sample] = -np.inf
    exact = np.argsort(-sims, axis=1)[:, :10]
    for name in args.only.split(","):
        start = time.perf_counter()
        found = METHODS[name](x, 10)
        seconds = time.perf_counter() - start
        pair_recall = np.mean([b in found[a] for a, b in planted])
        knn_recall = np.mean([len(set(found[i]) & set(e)) / 10 for i, e in zip(sample, exact)])
        print(f"{name:12s} rows {args.rows:7d}  {seconds:7.1f} s  planted-pair recall {pair_recall:.3f}  "
              f"recall@10 {knn_recall:.3f}", flush=True)


if __name__ == "__main__":
    main()
