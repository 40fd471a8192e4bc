"""Near duplicates: by pixel thumbnails where rows have them, by features where they do not.

A re-encoded, resized or slightly cropped copy keeps its pixels' pattern, not
its backbone features (see `mlkit.thumbnails`), so rows are compared by the
correlation of their 8 x 8 thumbnails: from the cache's `thumbnail` dataset
where cache-features stored one, else read from the manifest's images now.
Flat pictures of the same layout correlate too (two tricolour flags, one icon
drawn by two themes), and there the backbone tells them apart: a thumbnail
pair is kept only where the cosine of the two rows' mean-centred features
also reaches `near_agreement`. The test is off by default: measured with the
pretrained MobileNetV2 at 96 px, the backbone finds distinct icons of one
layout as alike as the thumbnails do, while it already misses planted copies
(it is not invariant to a crop or JPEG blocking; BENCHMARKS.md).
Rows without a usable thumbnail (the image is missing or changed since it was
cached, or it is one flat colour) are compared by the cosine of their
mean-centred features instead, at a threshold of its own. Both searches are
faiss's (`neighbours`), and summary.json says which one each pair came from.
"""

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from mlkit.auditing import duplicates
from mlkit.auditing.neighbours import centred_unit, nearest_in_memory, read_vectors, scan
from mlkit.images import DEFAULT_BACKGROUND, parse_background
from mlkit.thumbnails import THUMBNAIL_DATASET, THUMBNAIL_SHAPE, read_thumbnails, thumbnail_vectors

logger = logging.getLogger(__name__)

BY_THUMBNAILS, BY_FEATURES = "thumbnails", "features"


def image_paths(cache, images):
    """The images' files: manifest paths are relative to the manifest's folder, or absolute."""
    root = Path(cache.attrs.get("manifest_root", "."))
    return [root / image for image in images]


def audit_thumbnails(cache, table):
    """Each audited row's thumbnail, and a record of where they came from.

    The cache's own are used where it has them; rows without one (a cache
    made before thumbnails were cached, or rows reused from one) are read
    from their images now.

    Returns:
        (thumbnails, record): uint8 (N, 8, 8, 3), zero where a row has none;
        record counts the thumbnails from the cache and from the images and,
        for images that gave none, how many and why.
    """
    rows = table["rows"]
    if cache.has(THUMBNAIL_DATASET):
        thumbnails = cache.read(THUMBNAIL_DATASET, rows)
        missing = np.flatnonzero(~thumbnails.reshape(len(rows), -1).any(axis=1))
    else:
        thumbnails, missing = np.zeros((len(rows), *THUMBNAIL_SHAPE), np.uint8), np.arange(len(rows))
    record = {"thumbnails_from_cache": int(len(rows) - len(missing)), "thumbnails_from_images": 0}
    if not len(missing):
        return thumbnails, record
    logger.info("audit: %d of %d rows have no cached thumbnail; reading their images", len(missing), len(rows))
    background = cache.attrs.get("background")
    found, problems = read_thumbnails(image_paths(cache, table["image"][missing]),
                                      parse_background(background) if background else DEFAULT_BACKGROUND,
                                      [digest.decode() for digest in table["sha256"][missing]])
    thumbnails[missing] = found
    record["thumbnails_from_images"] = int(len(missing) - len(problems))
    if problems:
        first = min(problems)
        record["unusable_images"] = dict(Counter(problems.values()))
        record["first_unusable"] = f"{table['image'][missing[first]]}: {problems[first]}"
        logger.warning("audit: %d of %d images gave no thumbnail (first: %s); those rows are compared by features",
                       len(problems), len(missing), record["first_unusable"])
    return thumbnails, record


def feature_agreement(path, rows, pairs):
    """Cosine of mean-centred features for each (P, 2) pair of positions into `rows`, reading only the rows in pairs."""
    if not len(pairs):
        return np.zeros(0, np.float32)
    mean, _ = scan(path, rows)
    involved, where = np.unique(pairs, return_inverse=True)
    unit = centred_unit(read_vectors(path, rows[involved]), mean)
    where = where.reshape(pairs.shape)
    return np.einsum("ij,ij->i", unit[where[:, 0]], unit[where[:, 1]])


def near_duplicates(cache, table, feature_neighbours, exact_groups, config):
    """Near-duplicate pairs, by thumbnails between rows that have them and by features otherwise.

    Args:
        cache: the opened cache.
        table: the audited rows (`run.load_rows`).
        feature_neighbours: (similarities, positions) of the feature search.
        exact_groups: exact-duplicate group per row; pairs inside one are left out.
        config: the `AuditConfig` (near_threshold, near_agreement, near_feature_threshold, neighbours).

    Returns:
        ((rows, partners, similarities, by), record): the pairs, each once
        (later row, earlier row), `by` naming the comparison that found each;
        and what summary.json says about them.
    """
    thumbnails, record = audit_thumbnails(cache, table)
    vectors = thumbnail_vectors(thumbnails)
    del thumbnails
    usable = vectors.any(axis=1)
    found = []
    if usable.any():
        similarities, positions = nearest_in_memory(vectors, config.neighbours, config.seed)
        rows, partners, sims = duplicates.near_pairs(similarities, positions, config.near_threshold, exact_groups)
        keep = usable[rows] & usable[partners]
        rows, partners, sims = rows[keep], partners[keep], sims[keep]
        agree = np.ones(len(rows), dtype=bool)
        if config.near_agreement > -1:
            pairs = np.stack([rows, partners], axis=1)
            agree = feature_agreement(cache.path, table["rows"], pairs) >= config.near_agreement
        record["thumbnail_pairs_unlike_in_features"] = int((~agree).sum())
        found.append((rows[agree], partners[agree], sims[agree], BY_THUMBNAILS))
    del vectors
    if not usable.all():
        rows, partners, sims = duplicates.near_pairs(*feature_neighbours, config.near_feature_threshold, exact_groups)
        keep = ~(usable[rows] & usable[partners])
        found.append((rows[keep], partners[keep], sims[keep], BY_FEATURES))
    near = tuple(np.concatenate(parts) for parts in zip(*[(r, p, s, np.full(len(r), by, dtype=object))
                                                         for r, p, s, by in found]))
    record.update(rows_by_features=int((~usable).sum()),
                  pairs={by: int((near[3] == by).sum()) for by in (BY_THUMBNAILS, BY_FEATURES)})
    return near, record
