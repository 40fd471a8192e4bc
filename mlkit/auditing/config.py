"""The audit's settings, their defaults, and the names of what it writes.

`AuditConfig` holds every default once; the `mlkit audit` parser and
`mlkit.audit(...)` are built from it, and the resolved config is written into
`summary.json` beside the findings.
"""

from dataclasses import asdict, dataclass, fields

from mlkit.errors import MlkitError
from mlkit.options import option

AUDIT_DIR = "audit"
ISSUES_CSV = "issues.csv"
REVIEW_CSV = "review.csv"
REVIEW_COLUMN = "review"
SUMMARY_JSON = "summary.json"
SCORES_NPZ = "scores.npz"
# Finding kinds, in the order issues.csv lists them: leaks first.
KINDS = ("leak", "conflict", "duplicate", "label_error", "outlier")
PAIR_KINDS = ("leak", "conflict", "duplicate")
# What accepting a finding does in `mlkit audit --apply`.
ACTIONS = {"leak": "drop", "conflict": "relabel", "duplicate": "drop", "label_error": "relabel", "outlier": "drop"}
DECISION_COLUMN = "decision"
ACCEPT, REJECT = "accept", "reject"


@dataclass
class AuditConfig:
    """What the audit looks for, and how hard.

    Args:
        near_threshold: correlation of two rows' 8 x 8 pixel thumbnails at
            or above which they are near-duplicate candidates, each verified
            on its two images (`verify`). Raise it to verify fewer pairs.
            Defaults to 0.85.
        near_verify_threshold: correlation of a candidate's two images at
            32 x 32, at their best alignment (crops of up to 10%, shifts of a
            pixel), at or above which they are near duplicates. Raise it to
            see fewer pairs. Defaults to 0.92.
        near_colour_difference: the most a candidate's aligned images may
            differ in colour in any block of a 4 x 4 grid (RGB distance of the
            blocks' mean colours, 0 to 441 levels). Lower it to see fewer
            pairs; two flags of one layout differ by 70 or more. Defaults to 32.0.
        near_unverified_threshold: thumbnail correlation at or above which a
            candidate whose images cannot be read again (missing, changed
            since they were cached, undecodable) is a near duplicate all the
            same; summary.json counts them. Defaults to 0.95.
        near_agreement: cosine similarity of mean-centred features that a
            thumbnail pair must also reach to be a near duplicate: pictures
            of one layout that the backbone sees as different are not. -1
            turns the test off, the default: with MobileNetV2 at 96 px it
            costs planted copies more than it saves (BENCHMARKS.md). Defaults to -1.0.
        near_feature_threshold: cosine similarity of mean-centred features at
            or above which two rows are near duplicates, where either has no
            usable thumbnail. Defaults to 0.92.
        neighbours: nearest neighbours searched per row. Defaults to 10.
        outlier_k: neighbours whose mean cosine distance is a row's outlier score. Defaults to 5.
        outlier_z: robust z-score (median and MAD of the outlier scores)
            above which a row is an outlier. Defaults to 4.0.
        folds: k of the k-fold top models giving out-of-fold scores; 0 skips
            the label check. Defaults to 5.
        top: a tuned run name whose settings train the fold models, or "" for
            the small default top below. Defaults to "".
        taps: the cached taps (`mlkit.taps`) the fold tops read: "all" for
            every tap the cache holds (only the backbone's output in a cache
            without taps), "last" for the output alone, or names joined by "+".
            Several taps are weighted to the same total variance (`folds`),
            and the neighbours whose labels vote are searched in them.
            Defaults to "all".
        repeats: fold ensembles: the k folds are drawn this many times (each
            with its own seed) and every row's out-of-fold scores averaged.
            Defaults to 1.
        linear_weight: weight of the linear witness (ridge regression on the
            fold tops' features, on their folds: `linear`) against the fold
            tops in the out-of-fold scores of a classification cache; 0 leaves
            the tops alone. Defaults to 0.5.
        vote_weight: weight of the nearest neighbours' labels against the
            fold scores in each row's label probabilities (`evidence`); where
            the fold tops read several taps, the neighbours are searched in
            them, z-scored and weighted. Defaults to 0.5.
        units: hidden units of the default top. Defaults to 256.
        epochs: most epochs per fold model (10% of its training rows stop it early). Defaults to 20.
        batch: batch size of the fold tops, lowered so that an epoch has at least
            10 steps. Defaults to 512.
        lr: Adam learning rate of the default top. Defaults to 0.001.
        residual_z: regression: standardised residual above which a row is flagged. Defaults to 3.0.
        review: findings on the shortlist (review.csv, the contact sheets):
            ranked across kinds, each kind's best in turn (`findings.shortlist`);
            0 lists every finding. Defaults to 200.
        sheet_size: findings per contact sheet. Defaults to 24.
        seed: seeds the folds and the fold models. Defaults to 0.
    """

    near_threshold: float = option(0.85, "correlation of 8 x 8 pixel thumbnails at or above which two rows are "
                                         "near-duplicate candidates, verified on their images; raise it to verify "
                                         "fewer pairs")
    near_verify_threshold: float = option(0.92, "correlation of a candidate's two images at 32 x 32, best over crops "
                                                "of up to 10% and 1-pixel shifts, at or above which they are near "
                                                "duplicates; raise it to see fewer pairs")
    near_colour_difference: float = option(32.0, "largest RGB distance (0-441) allowed between the mean colours of "
                                                 "the aligned images' matching blocks (a 4 x 4 grid); lower it to "
                                                 "see fewer pairs (two flags of one layout differ by 70 or more)")
    near_unverified_threshold: float = option(0.95, "thumbnail correlation at or above which a candidate whose "
                                                    "images cannot be read again is a near duplicate all the same")
    near_agreement: float = option(-1.0, "cosine similarity (mean-centred features) that a thumbnail pair must "
                                         "also reach to be a near duplicate; -1 turns the test off")
    near_feature_threshold: float = option(0.92, "cosine similarity (mean-centred features) for near duplicates "
                                                 "where a row has no usable thumbnail (image missing, changed or one "
                                                 "flat colour)")
    neighbours: int = option(10, "nearest neighbours searched per row")
    outlier_k: int = option(5, "neighbours whose mean cosine distance is a row's outlier score")
    outlier_z: float = option(4.0, "robust z-score of that distance above which a row is an outlier")
    folds: int = option(5, "k of the k-fold top models for the label check; 0 skips it")
    top: str = option("", "a tuned run (in WORKDIR/tuning) whose settings train the fold tops", shown="a small top")
    taps: str = option("all", "cached taps the fold tops read: all (every one the cache holds), last, or names "
                              "joined by +; several are weighted as tune-top weights them, and the neighbours "
                              "whose labels vote are searched in them")
    repeats: int = option(1, "draws of the k folds, each seeded apart, whose out-of-fold scores are averaged")
    linear_weight: float = option(0.5, "weight of the linear witness (ridge regression on the fold tops' features "
                                       "and folds) against the fold tops (0 to 1; 0 leaves the tops alone)")
    vote_weight: float = option(0.5, "weight of the nearest neighbours' labels against the fold scores (0 to 1)")
    units: int = option(256, "hidden units of the default fold top")
    epochs: int = option(20, "most epochs per fold top (10% of its rows stop it early)")
    batch: int = option(512, "batch size of the fold tops (lowered to give an epoch at least 10 steps)")
    lr: float = option(0.001, "Adam learning rate of the default fold top")
    residual_z: float = option(3.0, "regression: standardised residual above which a row is flagged")
    review: int = option(200, "findings on the shortlist (review.csv and the contact sheets), ranked across kinds; "
                              "0 for all")
    sheet_size: int = option(24, "findings per contact sheet")
    seed: int = option(0, "seeds the folds and the fold tops")

    def __post_init__(self):
        for name in ("near_threshold", "near_verify_threshold", "near_unverified_threshold", "near_agreement",
                     "near_feature_threshold"):
            if not -1.0 <= float(getattr(self, name)) <= 1.0:
                raise MlkitError(f"{name.replace('_', '-')} {getattr(self, name)} is not a cosine similarity in [-1, 1]")
        if not 0.0 <= float(self.near_colour_difference):
            raise MlkitError(f"near-colour-difference {self.near_colour_difference} is not a distance (>= 0; "
                             "441 is as far as two colours lie)")
        if self.folds == 1 or self.folds < 0:
            raise MlkitError(f"folds {self.folds}: use 2 or more (5 is usual), or 0 to skip the label check")
        for name in ("linear_weight", "vote_weight"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise MlkitError(f"{name.replace('_', '-')} {getattr(self, name)} is not a weight in [0, 1]")
        if int(self.review) < 0:
            raise MlkitError(f"review {self.review} must be >= 0 (0 lists every finding)")
        for name in ("neighbours", "outlier_k", "units", "epochs", "batch", "repeats"):
            if int(getattr(self, name)) < 1:
                raise MlkitError(f"{name.replace('_', '-')} {getattr(self, name)} must be >= 1")
        if self.outlier_k > self.neighbours:
            raise MlkitError(f"outlier-k {self.outlier_k} is more than the {self.neighbours} neighbours searched; "
                             "raise --neighbours or lower --outlier-k")
        if not self.lr > 0:
            raise MlkitError(f"lr {self.lr}: learning rates must be positive")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def field_names(cls):
        return [f.name for f in fields(cls)]
