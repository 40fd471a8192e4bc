"""Near duplicates: thumbnail candidates verified on their images, or by features where rows have no thumbnail.

A re-encoded, resized or slightly cropped copy keeps its pixels' pattern, not
its backbone features (see `mlkit.thumbnails`). Rows are first paired by the
correlation of their 8 x 8 thumbnails (from the cache's `thumbnail` dataset
where cache-features stored one, else read from the manifest's images now),
at a threshold loose enough to keep copies whose thin lines an 8 x 8 picture
blurs away. Each candidate pair is then verified on its two images, read
again and compared at 32 x 32 after alignment (`verify`): at 8 x 8, distinct
pictures of one layout match too (two tricolour flags, one icon drawn by two
themes). A candidate whose images cannot be read again (moved, changed since
they were cached) is kept where its thumbnails alone reach a stricter
threshold, and summary.json says how many were and why.
The backbone is not a witness by default: measured with the pretrained
MobileNetV2 at 96 px, it finds distinct icons of one layout as alike as the
thumbnails do while it misses planted copies (BENCHMARKS.md); `near_agreement`
can still ask the two rows' mean-centred features to agree.
Rows without a usable thumbnail (the image is missing or changed since it was
cached, or it is one flat colour) are compared by the cosine of their
mean-centred features instead, at a threshold of its own. Both searches are
faiss's (`neighbours`), and summary.json says which evidence each pair had.
"""

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from mlkit.auditing import duplicates
from mlkit.auditing.neighbours import centred_unit, nearest_in_memory, read_vectors, scan
from mlkit.auditing.verify import verify_pairs
from mlkit.images import DEFAULT_BACKGROUND, parse_background
from mlkit.thumbnails import THUMBNAIL_DATASET, THUMBNAIL_SHAPE, read_thumbnails, thumbnail_vectors

logger = logging.getLogger(__name__)

# What a pair's verdict rests on: its images (verified), its thumbnails alone (images unreadable), its features.
BY_IMAGES, BY_THUMBNAILS, BY_FEATURES = "images", "thumbnails", "features"


def image_paths(cache, images):
    """The images' files: manifest paths are relative to the manifest's folder, or absolute."""
    root = Path(cache.attrs.get("manifest_root", "."))
    return [root / image for image in images]


def background_of(cache):
    """The colour the cache composited transparent pixels on."""
    background = cache.attrs.get("background")
    return parse_background(background) if background else DEFAULT_BACKGROUND


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
    found, problems = read_thumbnails(image_paths(cache, table["image"][missing]), background_of(cache),
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


def verify_candidates(cache, table, rows, partners, similarities, config, record):
    """The candidate pairs their images confirm, and those whose images cannot be read but whose thumbnails suffice.

    Returns:
        (keep, scores, evidence): a mask over the candidates; per candidate the
        score issues.csv shows (the images' aligned correlation, or the
        thumbnails' where the images could not be read); and what the pair's
        verdict rests on, for its detail. `record` gains the counts.
    """
    start = time.perf_counter()
    involved, where = np.unique(np.stack([rows, partners], axis=1), return_inverse=True)
    where = where.reshape(-1, 2)
    correlations, differences, problems = verify_pairs(
        image_paths(cache, table["image"][involved]), where, background_of(cache),
        [digest.decode() for digest in table["sha256"][involved]])
    readable = np.isfinite(correlations)
    verified = readable & (correlations >= config.near_verify_threshold) & (differences <= config.near_colour_difference)
    unverified = ~readable & (similarities >= config.near_unverified_threshold)
    evidence = np.array([
        f"{BY_IMAGES} {c:.3f} (colour difference {d:.0f}), thumbnails {s:.3f}" if ok
        else f"{BY_THUMBNAILS} {s:.3f} (images not verified: {problems.get(a) or problems.get(b)})"
        for ok, c, d, s, (a, b) in zip(readable, correlations, differences, similarities, where)], dtype=object)
    record.update(candidates=int(len(rows)), verified=int(verified.sum()),
                  rejected_on_images=int((readable & ~verified).sum()), unverified=int((~readable).sum()),
                  unverified_kept=int(unverified.sum()), verify_seconds=round(time.perf_counter() - start, 2))
    if problems:
        record["unreadable_images"] = dict(Counter(problems.values()))
        first = min(problems)
        record["first_unreadable"] = f"{table['image'][involved[first]]}: {problems[first]}"
        logger.warning("audit: %d images of near-duplicate candidates could not be read again (first: %s); "
                       "their pairs stand on their thumbnails at %.2f", len(problems), record["first_unreadable"],
                       config.near_unverified_threshold)
    return verified | unverified, np.where(readable, correlations, similarities), evidence


def near_duplicates(cache, table, feature_neighbours, exact_groups, config):
    """Near-duplicate pairs: thumbnail candidates verified on their images where rows have thumbnails, else by features.

    Args:
        cache: the opened cache.
        table: the audited rows (`run.load_rows`).
        feature_neighbours: (similarities, positions) of the feature search.
        exact_groups: exact-duplicate group per row; pairs inside one are left out.
        config: the `AuditConfig` (the near_* settings, neighbours).

    Returns:
        ((rows, partners, scores, evidence), record): the pairs, each once
        (later row, earlier row), with the score of the comparison that
        decided each and what it rests on ("images 0.97 (colour difference
        9), thumbnails 0.91", "thumbnails ..." or "features"); and what
        summary.json says about them.
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
        keep, sims, evidence = verify_candidates(cache, table, rows, partners, sims, config, record)
        rows, partners, sims, evidence = rows[keep], partners[keep], sims[keep], evidence[keep]
        agree = np.ones(len(rows), dtype=bool)
        if config.near_agreement > -1:
            pairs = np.stack([rows, partners], axis=1)
            agree = feature_agreement(cache.path, table["rows"], pairs) >= config.near_agreement
        record["thumbnail_pairs_unlike_in_features"] = int((~agree).sum())
        found.append((rows[agree], partners[agree], sims[agree], evidence[agree]))
    del vectors
    if not usable.all():
        rows, partners, sims = duplicates.near_pairs(*feature_neighbours, config.near_feature_threshold, exact_groups)
        keep = ~(usable[rows] & usable[partners])
        found.append((rows[keep], partners[keep], sims[keep], np.full(keep.sum(), BY_FEATURES, dtype=object)))
    near = tuple(np.concatenate(parts) for parts in zip(*found))
    by = np.array([text.split(" ", 1)[0] for text in near[3]], dtype=object)
    record.update(rows_by_features=int((~usable).sum()),
                  pairs={name: int((by == name).sum()) for name in (BY_IMAGES, BY_THUMBNAILS, BY_FEATURES)})
    return near, record
