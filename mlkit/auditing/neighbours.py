"""Nearest neighbours by cosine: of cached features (outlier scores, and near duplicates of rows
without a usable thumbnail) and of vectors in memory (thumbnails, `near`).

Pooled CNN features are non-negative, so their raw cosines crowd near 1 and
separate images poorly; each feature is centred on the mean of all rows
before its cosine is taken. The search is faiss's (faiss-cpu): exact inner
products (`IndexFlatIP`) up to `EXACT_MAX_ROWS` rows. Above that, an inverted
file (`IndexIVFFlat`, about sqrt(N) lists, 8 probed), on the first
`REDUCED_DIMS` principal components (renormalised) of vectors wider than that:
it found every planted near duplicate where HNSW (faiss's and hnswlib) missed
some and took longer (`benchmarks/knn_choice.py`, BENCHMARKS.md), and the
projection makes it five times cheaper and its index a fifth of the features'
size. Features are read from the cache in blocks: only the index holds them
whole.

Where the fold tops read several cached taps, the neighbours whose labels
vote in the label check (`evidence`) are searched apart, in those taps, each
column z-scored and each tap weighted as the tops weight them
(`standardised_neighbours`): on the stamps their votes found more planted
label errors than those of the output's centred cosines, and as many on the
icons (BENCHMARKS.md).
"""

import h5py
import numpy as np

BLOCK_ROWS = 4096
# Exact search costs N^2 D: about 5 s at 10,000 x 1,280 on 2 cores, minutes at 100,000.
EXACT_MAX_ROWS = 20000
PROBES = 8
REDUCED_DIMS = 256
# faiss's k-means wants at least 39 training rows per list.
TRAINING_ROWS_PER_LIST = 50


def feature_shape(path):
    with h5py.File(path, "r") as h5:
        return h5["features"].shape[1:]


def as_vectors(block):
    """Feature vectors of a block: raw H x W x C maps are averaged over their positions."""
    block = np.asarray(block, dtype=np.float32)
    return block.reshape(len(block), -1, block.shape[-1]).mean(axis=1) if block.ndim == 4 else block


def feature_blocks(path, rows, block_rows=BLOCK_ROWS):
    """(positions, vectors) blocks of the cache's features at sorted `rows`, read in contiguous slices."""
    with h5py.File(path, "r") as h5:
        features = h5["features"]
        for start in range(0, len(rows), block_rows):
            chunk = rows[start:start + block_rows]
            block = features[chunk[0]:chunk[-1] + 1][chunk - chunk[0]]
            yield np.arange(start, start + len(chunk)), as_vectors(block)


def read_vectors(path, rows):
    """All feature vectors at `rows` in one float32 array.

    Pooled float32 features of consecutive rows (the usual case: every row
    done) are read by HDF5 straight into the array, with no block in
    between; others are filled block by block.
    """
    rows = np.asarray(rows)
    with h5py.File(path, "r") as h5:
        features = h5["features"]
        if features.ndim == 2 and features.dtype == np.float32 and len(rows) and rows[-1] - rows[0] == len(rows) - 1:
            vectors = np.empty((len(rows), features.shape[1]), dtype=np.float32)
            features.read_direct(vectors, np.s_[rows[0]:rows[-1] + 1])
            return vectors
    vectors = None
    for at, block in feature_blocks(path, rows):
        if vectors is None:
            vectors = np.empty((len(rows), block.shape[1]), dtype=np.float32)
        vectors[at] = block
    return vectors


def scan(path, rows, sample_size=0, seed=0):
    """One pass over the features: their mean (float64 sums) and a random sample of `sample_size` rows."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(rows), dtype=bool)
    chosen[rng.choice(len(rows), min(sample_size, len(rows)), replace=False)] = True
    total, sample = 0.0, []
    for at, block in feature_blocks(path, rows):
        total = total + block.sum(axis=0, dtype=np.float64)
        sample.append(block[chosen[at]])
    return (total / max(len(rows), 1)).astype(np.float32), np.concatenate(sample)


def row_statistics(features, rows, block=1024):
    """Per-feature mean and variance over `rows`, summed in float64 from small float32 blocks.

    Small blocks: at 100,000 x 1,280 a float64 block of 8,192 rows and its
    square were 170 MB more at the audit's peak.
    """
    total = total_sq = 0.0
    for start in range(0, len(rows), block):
        chunk = features[rows[start:start + block]]
        total = total + chunk.sum(axis=0, dtype=np.float64)
        total_sq = total_sq + np.square(chunk).sum(axis=0, dtype=np.float64)
    mean = total / len(rows)
    return mean, np.maximum(total_sq / len(rows) - mean**2, 0.0)


def standardised_neighbours(features, k, weights=None):
    """Each row's k nearest other rows by cosine of its z-scored (and weighted) features.

    Overwrites `features` with the unit vectors it searches, block by block,
    so the matrix is not held twice: call it when the matrix is no longer needed.

    Args:
        features: float32 (N, D) in memory, e.g. the fold tops' taps side by side.
        k: neighbours per row.
        weights: (D,) column weights after z-scoring (`folds.column_weights`), or None. Defaults to None.

    Returns:
        (similarities, positions) as `nearest_neighbours` returns them.
    """
    mean, variance = row_statistics(features, np.arange(len(features)))
    scale = 1.0 / (np.sqrt(variance) + 1e-6)
    if weights is not None:
        scale = scale * weights
    mean, scale = mean.astype(np.float32), scale.astype(np.float32)
    for start in range(0, len(features), BLOCK_ROWS):
        block = (features[start:start + BLOCK_ROWS] - mean) * scale
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        features[start:start + BLOCK_ROWS] = block / np.maximum(norms, 1e-12)
    return nearest_in_memory(features, k)


def centred_unit(block, mean):
    """Rows centred on `mean` and scaled to unit length (an all-mean row stays zero)."""
    block = block - mean
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return np.ascontiguousarray(block / np.maximum(norms, 1e-12), dtype=np.float32)


def make_index(dim, num_rows):
    """An inner-product faiss index, and how many rows it must be trained on (0: none).

    Exact up to `EXACT_MAX_ROWS` rows; above, an inverted file, on the first
    `REDUCED_DIMS` principal components (renormalised) when vectors are wider.
    """
    import faiss

    if num_rows <= EXACT_MAX_ROWS:
        return faiss.IndexFlatIP(dim), 0
    lists = int(round(np.sqrt(num_rows)))
    reduced = min(dim, REDUCED_DIMS)
    inverted = faiss.IndexIVFFlat(faiss.IndexFlatIP(reduced), reduced, lists, faiss.METRIC_INNER_PRODUCT)
    inverted.nprobe = PROBES
    training_rows = max(TRAINING_ROWS_PER_LIST * lists, 2 * dim)
    if reduced == dim:
        return inverted, training_rows
    transforms = [faiss.PCAMatrix(dim, reduced), faiss.NormalizationTransform(reduced)]
    index = faiss.IndexPreTransform(inverted)
    for transform in reversed(transforms):
        index.prepend_transform(transform)
    # The C++ index points at these; keep their Python owners alive as long as it.
    index.referenced_objects = [inverted, *transforms]
    return index, training_rows


def without_self(similarities, ids, own, k):
    """Each row's k best matches other than itself (its own id is dropped wherever it ranks).

    A row whose own id is not among the matches loses its last one instead; a
    self match left over when there are too few rows becomes "none" (-inf, -1).
    """
    is_self = ids == own[:, None]
    similarities = np.where(is_self, -np.inf, similarities)
    ids = np.where(is_self, -1, ids)
    # A stable sort puts each row's other matches first, in their ranked order.
    keep = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(similarities, keep, 1), np.take_along_axis(ids, keep, 1)


def search(index, blocks, num_rows, k):
    """Each row's k best matches other than itself, searched block by block in a filled index.

    Args:
        index: a faiss index holding all `num_rows` vectors.
        blocks: (positions, unit vectors) blocks covering every row.
        num_rows: rows in the index.
        k: neighbours per row.

    Returns:
        (similarities, positions) as `nearest_neighbours` returns them.
    """
    similarities = np.full((num_rows, k), -np.inf, dtype=np.float32)
    positions = np.full((num_rows, k), -1, dtype=np.int64)
    for at, block in blocks:
        found_sim, found_ids = index.search(block, min(k + 1, num_rows))
        found_sim[found_ids < 0] = -np.inf
        sims, ids = without_self(found_sim, found_ids, at, k)
        similarities[at, : sims.shape[1]], positions[at, : ids.shape[1]] = sims, ids
    return similarities, positions


def nearest_neighbours(path, rows, k):
    """Each row's k nearest other rows by cosine of mean-centred features.

    Args:
        path: the cache file.
        rows: sorted cache row indices to search among.
        k: neighbours per row.

    Returns:
        (similarities, positions): float32 and int64 arrays (len(rows), k),
        best first; positions index into `rows`, -1 (similarity -inf) where a
        collection has fewer than k + 1 rows.
    """
    rows = np.asarray(rows)
    dim = as_vectors(np.zeros((1, *feature_shape(path)), np.float32)).shape[1]
    index, training_rows = make_index(dim, len(rows))
    mean, sample = scan(path, rows, training_rows)
    if training_rows:
        index.train(centred_unit(sample, mean))
    del sample
    for _, block in feature_blocks(path, rows):
        index.add(centred_unit(block, mean))
    blocks = ((at, centred_unit(block, mean)) for at, block in feature_blocks(path, rows))
    return search(index, blocks, len(rows), k)


def nearest_in_memory(vectors, k, seed=0):
    """Each row's k nearest other rows by inner product of unit `vectors` (N, D) held in memory.

    Returns:
        (similarities, positions) as `nearest_neighbours` returns them.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index, training_rows = make_index(vectors.shape[1], len(vectors))
    if training_rows:
        sample = np.random.default_rng(seed).choice(len(vectors), min(training_rows, len(vectors)), replace=False)
        index.train(vectors[np.sort(sample)])
    index.add(vectors)
    blocks = ((np.arange(start, min(start + BLOCK_ROWS, len(vectors))), vectors[start:start + BLOCK_ROWS])
              for start in range(0, len(vectors), BLOCK_ROWS))
    return search(index, blocks, len(vectors), k)
