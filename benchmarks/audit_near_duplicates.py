"""Which image descriptor finds near duplicates? Pixel thumbnails, perceptual hashes and backbone features.

Two collections, each with copies planted of 40+ of its images: JPEG q75, resized by 0.8, cropped by
5%, and all three at once (tests/audit_data.py). `synth`: the test's synthetic set (300 multilabel
images of 192 px, every 7th copied). `stamps`: the 802 Tux Paint stamps, 40 copied at random. Every
pair of rows is scored by each descriptor, and a planted pair is one inside a copy group. Printed per
descriptor: precision and recall at its threshold (the audit's default for the thumbnails), the best
min(precision, recall) over all thresholds, recall at precision >= 0.95, and the lowest planted and
highest unplanted similarity. On the stamps, two different stamps can be the same picture (a letter
in two folders, l and I): precision counts only pairs with a planted copy in them, and the pairs of
two originals above the threshold are counted apart.

    python benchmarks/audit_near_duplicates.py                 # both sets, with MobileNetV2 features
    python benchmarks/audit_near_duplicates.py --no-features   # descriptors from pixels only (no TensorFlow)
    python benchmarks/audit_near_duplicates.py --agreement --icons /work/data/icons/manifest.csv
    python benchmarks/audit_near_duplicates.py --verify --icons /work/data/icons/manifest.csv

--agreement measures the audit's second test instead: of the pairs whose thumbnails match (>= the
audit's near threshold), how many keep a feature cosine (mean-centred MobileNetV2 features) at or
above each candidate threshold. Planted copies (synth, stamps) should keep it; distinct pictures of a
similar layout should not: the same freedesktop icon name drawn by two themes
(benchmarks/icon_themes.py), leaving out the pairs between themes that share artwork (gnome, mate,
Adwaita: mate forked GNOME 2's icons).

--verify measures the audit's near-duplicate check as it runs by default: thumbnail candidates
(>= near_threshold) verified on their images (mlkit/auditing/verify.py), against the thumbnails alone
at 0.95 (the check before it). Besides synth and stamps: `flags`, 23 national tricolours of one layout
(tests/audit_data.py) with copies of each planted, where every pair of two different flags is a false
pair; and the same-name icon pairs above (false pairs too, though a theme that reuses another's artwork
may hold real copies). Printed: every pair scored by both stages, so the thresholds can be chosen on
them (a grid of the verification's two thresholds), then `mlkit.audit` itself (folds 0, on a cache of
random features: near duplicates do not read features) at its defaults, with its time per candidate.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.fft import dctn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from audit_data import PRETRAINED, plant_near_duplicates, write_flags

from mlkit.auditing.config import AuditConfig
from mlkit.auditing.verify import verify_pairs
from mlkit.images import load_image
from mlkit.thumbnails import thumbnail, thumbnail_vectors

STAMPS = Path("/usr/share/tuxpaint/stamps")


def grey_square(pixels, size):
    return np.asarray(Image.fromarray(pixels).convert("L").resize((size, size), Image.Resampling.BOX), np.float64)


def centred_unit(vectors):
    vectors = np.asarray(vectors, np.float64)
    vectors = vectors - vectors.mean(axis=1, keepdims=True)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def bits_similarity(bits):
    """1 - 2 * (Hamming distance / bits): 1 for equal hashes, about 0 for unrelated ones."""
    bits = np.asarray(bits, np.float64)
    agree = bits @ bits.T + (1 - bits) @ (1 - bits).T
    return 2 * agree / bits.shape[1] - 1


def phash(pixels, size=32, keep=8):
    """DCT perceptual hash: the low frequencies of a grey square against their median (DC left out)."""
    low = dctn(grey_square(pixels, size), norm="ortho")[:keep, :keep].ravel()[1:]
    return low > np.median(low)


def dhash(pixels, size=8):
    """Difference hash: is each pixel of a (size + 1) x size grey image brighter than its left neighbour."""
    grey = np.asarray(Image.fromarray(pixels).convert("L").resize((size + 1, size), Image.Resampling.BOX), np.float64)
    return (grey[:, 1:] > grey[:, :-1]).ravel()


def colour_thumbnail(pixels, size):
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BOX), np.float64).ravel()


def descriptors(images, features):
    """Name -> (N, N) similarity matrix, and the threshold each is judged at."""
    found = {
        "thumbnail 8x8 RGB (mlkit)": (lambda: (lambda v: v @ v.T)(thumbnail_vectors(np.stack([thumbnail(i) for i in images]))),
                                      AuditConfig().near_threshold),
        "thumbnail 16x16 RGB": (lambda: (lambda v: v @ v.T)(centred_unit([colour_thumbnail(i, 16) for i in images])), 0.95),
        "thumbnail 8x8 grey": (lambda: (lambda v: v @ v.T)(centred_unit([grey_square(i, 8).ravel() for i in images])), 0.95),
        "pHash 64 bits (DCT 8x8 of 32x32)": (lambda: bits_similarity([phash(i) for i in images]), 1 - 2 * 10 / 63),
        "pHash 143 bits (DCT 12x12 of 48x48)": (lambda: bits_similarity([phash(i, 48, 12) for i in images]), 1 - 2 * 28 / 143),
        "dHash 64 bits": (lambda: bits_similarity([dhash(i) for i in images]), 1 - 2 * 10 / 64),
    }
    if features is not None:
        found["MobileNetV2 pooled features, 96 px"] = (lambda: (lambda v: v @ v.T)(
            (lambda x: x / np.linalg.norm(x, axis=1, keepdims=True))(features - features.mean(axis=0))),
            AuditConfig().near_feature_threshold)
    return {name: (make(), threshold) for name, (make, threshold) in found.items()}


def scores(similarity, threshold, groups, originals):
    """Precision and recall at the threshold, best min(P, R), recall at P >= 0.95, the planted/unplanted margin."""
    n = len(similarity)
    upper = np.triu_indices(n, 1)
    planted = np.zeros((n, n), bool)
    for group in groups:
        planted[np.ix_(group, group)] = True
    judged = ~((upper[0] < originals) & (upper[1] < originals))
    truth, values = planted[upper][judged], similarity[upper][judged]
    order = np.argsort(-values, kind="stable")
    hits = np.cumsum(truth[order])
    precision, recall = hits / np.arange(1, len(order) + 1), hits / truth.sum()
    above = values >= threshold
    at = (truth & above).sum() / max(above.sum(), 1), (truth & above).sum() / truth.sum()
    confident = precision >= 0.95
    among_originals = int((similarity[upper][~judged] >= threshold).sum())
    return (*at, np.max(np.minimum(precision, recall)), recall[confident].max() if confident.any() else 0.0,
            values[truth].min(), values[~truth].max(), among_originals)


def collection(name, workdir, seed=0):
    """(manifest, planted groups, number of original rows) of one collection with copies planted."""
    if name == "synth":
        from mlkit.data.synth import synthesize

        manifest = synthesize(workdir / name, task="multilabel", n=300, size=192, seed=0)
        sources = range(0, 300, 300 // 40)
    else:
        from mlkit.data.adapters import from_folders

        manifest = workdir / name / "manifest.csv"
        from_folders(STAMPS, manifest, labels="path")
        count = len(pd.read_csv(manifest))
        sources = np.sort(np.random.default_rng(seed).choice(count, 40, replace=False))
    originals = len(pd.read_csv(manifest))
    return manifest, plant_near_duplicates(manifest, sources, seed), originals


def cached_features(manifest, workdir):
    """Pooled MobileNetV2 features (pretrained, 96 px) of the manifest's rows, in manifest order."""
    from mlkit.bottlenecks.cache import open_cache
    from mlkit.bottlenecks.extract import cache_features

    result = cache_features(manifest, workdir, backbone="mobilenetv2", weights=str(PRETRAINED), image_size=96,
                            progress=False, dataset=manifest.parent.name)
    cache = open_cache(result.path)
    rows = cache.indices()
    if len(rows) != len(pd.read_csv(manifest)):
        raise SystemExit(f"{len(pd.read_csv(manifest)) - len(rows)} images were skipped while caching")
    return cache.read("features", rows).astype(np.float64)


SHARED_ARTWORK = {"gnome", "mate", "Adwaita"}
AGREEMENT_THRESHOLDS = (-1.0, 0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def thumbnail_similarity(images):
    vectors = thumbnail_vectors(np.stack([thumbnail(image) for image in images]))
    return vectors @ vectors.T


def feature_cosine(features):
    centred = features - features.mean(axis=0)
    unit = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def planted_agreement(name, workdir):
    """Feature cosines of the planted pairs whose thumbnails match, and how many planted pairs there are."""
    manifest, groups, _ = collection(name, workdir)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    matched = thumbnail_similarity([load_image(manifest.parent / image) for image in table["image"]])
    cosine = feature_cosine(cached_features(manifest, workdir))
    pairs = [(a, b) for group in groups for i, a in enumerate(group) for b in group[i + 1:]]
    threshold = AuditConfig().near_threshold
    return np.array([cosine[a, b] for a, b in pairs if matched[a, b] >= threshold]), len(pairs)


def icon_pairs(manifest):
    """Pairs of rows drawing one icon name in two themes that do not share artwork."""
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    parts = table["image"].str.split("/")
    theme, name = parts.str[1], parts.str[-1]
    pairs = []
    for _, rows in table.groupby(name).groups.items():
        rows = list(rows)
        pairs += [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]
                  if theme[a] != theme[b] and not {theme[a], theme[b]} <= SHARED_ARTWORK]
    return table, pairs


def distinct_agreement(manifest, workdir):
    """Feature cosines of the same-name icon pairs whose thumbnails match, and how many such pairs there are."""
    table, pairs = icon_pairs(manifest)
    matched = thumbnail_similarity([load_image(manifest.parent / image) for image in table["image"]])
    cosine = feature_cosine(cached_features(manifest, workdir))
    threshold = AuditConfig().near_threshold
    return np.array([cosine[a, b] for a, b in pairs if matched[a, b] >= threshold]), len(pairs)


def agreement(args, workdir):
    """Per feature threshold: planted recall (synth, stamps) and the share of distinct icon pairs still called duplicates."""
    planted = {name: planted_agreement(name, workdir) for name in ("synth", "stamps")}
    distinct, icon_total = distinct_agreement(Path(args.icons), workdir)
    print(f"same-name icon pairs of themes that do not share artwork: {icon_total}, "
          f"{len(distinct)} with matching thumbnails")
    print("feature cosine >=   synth recall   stamps recall   icon pairs called duplicates (share of matched)")
    for threshold in AGREEMENT_THRESHOLDS:
        recalls = [(cosines >= threshold).sum() / total for cosines, total in planted.values()]
        called = int((distinct >= threshold).sum())
        print(f"{threshold:17.2f}   {recalls[0]:12.3f}   {recalls[1]:13.3f}   {called:5d} "
              f"({called / max(len(distinct), 1):.3f})", flush=True)


VERIFY_GRID = ((0.90, 0.92, 0.94, 0.96), (24, 32, 48, 1000))


def verify_collection(name, workdir, icons):
    """(manifest, truth, false): planted pairs, and pairs that must not be called duplicates (None: undecided)."""
    if name == "icons":
        table, pairs = icon_pairs(icons)
        return icons, set(), {(min(a, b), max(a, b)) for a, b in pairs}
    if name == "flags":
        manifest = write_flags(workdir / name)
        originals = len(pd.read_csv(manifest))
        groups = plant_near_duplicates(manifest, range(originals))
    else:
        manifest, groups, originals = collection(name, workdir)
    truth = {(a, b) for group in groups for a in group for b in group if a < b}
    owner = {row: group[0] for group in groups for row in group}
    if name == "flags":
        return manifest, truth, lambda a, b: owner[a] != owner[b]
    # Two originals may be one picture (a letter filed twice): only pairs with a planted copy are judged.
    return manifest, truth, lambda a, b: (a, b) not in truth and max(a, b) >= originals


def is_false(false, a, b):
    return (a, b) in false if isinstance(false, set) else false(a, b)


def verify_scores(name, workdir, icons, near_threshold):
    """Every candidate pair's thumbnail similarity and verification, whether planted or false."""
    manifest, truth, false = verify_collection(name, workdir, icons)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    paths = [manifest.parent / image for image in table["image"]]
    similarity = thumbnail_similarity([load_image(path) for path in paths])
    a, b = np.nonzero(np.triu(similarity >= near_threshold, 1))
    start = time.perf_counter()
    correlations, differences, _ = verify_pairs(paths, np.stack([a, b], axis=1), workers=1)
    seconds = (time.perf_counter() - start) / max(len(a), 1)
    planted = np.array([(x, y) in truth for x, y in zip(a, b)], bool)
    wrong = np.array([is_false(false, x, y) for x, y in zip(a, b)], bool)
    return {"manifest": manifest, "truth": truth, "false": false, "thumb": similarity[a, b], "corr": correlations,
            "diff": differences, "planted": planted, "wrong": wrong, "seconds": seconds, "candidates": len(a)}


def audit_pairs(manifest, workdir, near_threshold):
    """The near pairs `mlkit.audit` reports at its defaults, on a cache of random features, and its summary."""
    import mlkit
    from mlkit.bottlenecks.cache import write_cache

    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    path = workdir / "bottlenecks" / f"{manifest.parent.name}_all_random_inet_avg.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_cache(path, features=np.random.default_rng(0).normal(size=(len(table), 64)), labels=np.zeros(len(table), int),
                split=[""] * len(table), image=table["image"].tolist(),
                attrs={"task": "multiclass", "label_names": ["any"], "manifest_root": str(manifest.parent)})
    result = mlkit.audit(path, workdir=workdir, folds=0, review=0, near_threshold=near_threshold)
    near = result.issues[result.issues["match"] == "near"]
    pairs = {(min(a, b), max(a, b)) for a, b in zip(near["row"].astype(int), near["partner_row"].astype(int))}
    return pairs, result.summary["near_duplicates"]


def verify(args, workdir):
    """Both stages on every candidate pair, a grid of the verification's thresholds, then `mlkit.audit` itself."""
    config = AuditConfig(near_threshold=args.near_threshold or AuditConfig().near_threshold)
    found = {name: verify_scores(name, workdir, Path(args.icons), config.near_threshold)
             for name in ("synth", "stamps", "flags", "icons")}
    print(f"candidates: thumbnails >= {config.near_threshold}; planted recall / false pairs")
    print("rule                                   " + "".join(f"{name:>20s}" for name in found))
    rules = [("thumbnails alone >= 0.95", lambda r: r["thumb"] >= 0.95)]
    rules += [(f"images >= {c:.2f}, colour difference <= {d}", lambda r, c=c, d=d: (r["corr"] >= c) & (r["diff"] <= d))
              for c in VERIFY_GRID[0] for d in VERIFY_GRID[1]]
    for label, rule in rules:
        cells = []
        for r in found.values():
            called = rule(r)
            recall = (called & r["planted"]).sum() / len(r["truth"]) if r["truth"] else float("nan")
            cells.append(f"{recall:8.3f} / {int((called & r['wrong']).sum()):5d}   ")
        print(f"{label:38s} " + "".join(cells))
    for name, r in found.items():
        print(f"{name}: {r['candidates']} candidates, {r['seconds'] * 1000:.1f} ms per candidate pair (one thread)")
    print(f"\nmlkit.audit at its defaults (near_threshold {config.near_threshold}, near_verify_threshold "
          f"{config.near_verify_threshold}, near_colour_difference {config.near_colour_difference}):")
    for name, r in found.items():
        pairs, record = audit_pairs(Path(r["manifest"]), workdir / f"audit_{name}", config.near_threshold)
        hits = len(pairs & r["truth"])
        wrong = sum(is_false(r["false"], a, b) for a, b in pairs)
        recall = hits / len(r["truth"]) if r["truth"] else float("nan")
        print(f"{name:7s} recall {recall:.3f}  precision {hits / max(hits + wrong, 1):.3f}  false pairs {wrong}  "
              f"pairs found {len(pairs)}  candidates {record['candidates']}  verified in {record['verify_seconds']} s "
              f"({1000 * record['verify_seconds'] / max(record['candidates'], 1):.1f} ms per pair)", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="synth,stamps", help="comma-separated: synth, stamps (default both)")
    parser.add_argument("--no-features", action="store_true", help="leave out the backbone features")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--agreement", action="store_true", help="measure the feature-agreement threshold instead")
    parser.add_argument("--verify", action="store_true", help="measure the audit's verified near-duplicate check")
    parser.add_argument("--near-threshold", type=float, default=None,
                        help="with --verify: the thumbnail threshold of the candidates (default: the audit's)")
    parser.add_argument("--icons", default="/work/data/icons/manifest.csv",
                        help="with --agreement or --verify: the icon manifest")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="audit_near_"))
    if args.agreement:
        agreement(args, workdir)
        return
    if args.verify:
        verify(args, workdir)
        return
    for name in args.sets.split(","):
        manifest, groups, originals = collection(name, workdir)
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        images = [load_image(manifest.parent / image) for image in table["image"]]
        features = None if args.no_features else cached_features(manifest, workdir)
        pairs = sum(len(group) * (len(group) - 1) // 2 for group in groups)
        print(f"\n{name}: {len(images)} rows, {len(groups)} copy groups, {pairs} planted pairs")
        print(f"{'descriptor':38s} {'thr':>6s}  P@thr  R@thr  best min(P,R)  R@P>=0.95  lowest planted  highest other"
              "  original pairs >= thr")
        for label, (similarity, threshold) in descriptors(images, features).items():
            p, r, best, r95, low, high, among = scores(similarity, threshold, groups, originals)
            print(f"{label:38s} {threshold:6.3f}  {p:.3f}  {r:.3f}  {best:13.3f}  {r95:9.3f}  {low:14.3f}  {high:13.3f}"
                  f"  {among:21d}", flush=True)


if __name__ == "__main__":
    main()
