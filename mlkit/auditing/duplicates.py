"""Exact duplicates (same image bytes), near duplicates (close features), and their groups.

Exact duplicates share the image sha256 the cache keyed each row by. Near
duplicates are pairs of nearest neighbours at or above a cosine threshold
that are not already exact duplicates of each other. Both are joined into
duplicate groups (connected components), which `mlkit data split
--group-duplicates` keeps in one split.
"""

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def exact_groups(sha256):
    """A group id per row: rows with the same non-empty sha256 share one; -1 for unique rows.

    Args:
        sha256: one hash per row (bytes or str); empty for rows without one.

    Returns:
        int64 array of group ids, numbered in order of each group's first row.
    """
    sha256 = np.asarray(sha256).astype("S64")
    _, first, inverse, counts = np.unique(sha256, return_index=True, return_inverse=True, return_counts=True)
    shared = (counts > 1) & (sha256[first] != b"")
    groups = np.full(len(sha256), -1, dtype=np.int64)
    member = shared[inverse]
    # Renumber the shared hashes by their first row, so group 0 is the earliest.
    order = np.argsort(first[shared])
    renumber = np.full(len(counts), -1, dtype=np.int64)
    renumber[np.flatnonzero(shared)[order]] = np.arange(shared.sum())
    groups[member] = renumber[inverse[member]]
    return groups


def exact_pairs(groups):
    """(row, partner) pairs: every member of a group paired with the group's first row."""
    rows = np.flatnonzero(groups >= 0)
    _, first = np.unique(groups[rows], return_index=True)
    leader = np.full(groups.max() + 1 if len(rows) else 0, -1, dtype=np.int64)
    leader[groups[rows[first]]] = rows[first]
    partners = leader[groups[rows]]
    keep = partners != rows
    return np.stack([rows[keep], partners[keep]], axis=1)


def near_pairs(similarities, positions, threshold, groups):
    """(row, partner, similarity) of neighbour pairs at or above `threshold`, each pair once.

    Pairs inside one exact-duplicate group are left out: they are reported as exact.
    The partner is the lower row index, so a pair reads (later row, earlier row).
    """
    rows, ranks = np.nonzero((similarities >= threshold) & (positions >= 0))
    partners = positions[rows, ranks]
    a, b = np.maximum(rows, partners), np.minimum(rows, partners)
    same_exact = (groups[a] >= 0) & (groups[a] == groups[b])
    a, b, sims = a[~same_exact], b[~same_exact], similarities[rows, ranks][~same_exact]
    unique, index = np.unique(np.stack([a, b], axis=1), axis=0, return_index=True)
    return unique[:, 0], unique[:, 1], sims[index]


def duplicate_groups(num_rows, pairs):
    """Connected components of the duplicate pairs: a group id per row, -1 for rows in no pair.

    Args:
        num_rows: rows in the collection.
        pairs: (P, 2) row pairs, exact and near.

    Returns:
        int64 array; groups are numbered 0.. in order of their first row.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(num_rows, num_rows))
    _, labels = connected_components(graph, directed=False)
    in_pair = np.zeros(num_rows, dtype=bool)
    in_pair[pairs.ravel()] = True
    _, first = np.unique(labels[in_pair], return_index=True)
    renumber = dict(zip(labels[in_pair][np.sort(first)], range(len(first))))
    groups = np.full(num_rows, -1, dtype=np.int64)
    groups[in_pair] = [renumber[label] for label in labels[in_pair]]
    return groups
