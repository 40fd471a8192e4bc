"""The end of a fine-tuning run: scores, the label decision, the test report, the export and the record.

`RecordStep` is the part of a fine-tuning job that runs after training: it
scores validation and test through the trained network and the cached top
(the baseline), fits the decision rule on validation, saves
`models/<run>.keras` (images in, labels out), the epoch log `models/<run>.csv`
and the record `models/<run>.json`.
"""

import csv
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mlkit import __version__
from mlkit.errors import MlkitError
from mlkit.evaluation.decisions import parse_rule
from mlkit.files import atomic_path, remove_stale_temporaries, write_json
from mlkit.models.distribute import precision_policy

HEADLINE = {"multilabel": ("micro F1", lambda r: r["micro"]["f1"]),
            "multiclass": ("accuracy", lambda r: r["accuracy"]),
            "regression": ("MAE", lambda r: r["mae"])}


@dataclass
class FinetuneResult:
    """What `finetune` made and measured."""

    run: str
    model_path: Path
    json_path: Path
    csv_path: Path
    report: dict = field(repr=False)
    baseline: dict = field(repr=False)
    seconds: float = 0.0

    def describe(self):
        """Where the model went and the test metric beside the cached top's, for the console."""
        name, finetuned, cached = self.headline
        lines = [f"model: {self.model_path}", f"record: {self.json_path}", f"log: {self.csv_path}",
                 f"test {name}: {finetuned:.4f} fine-tuned vs {cached:.4f} for the cached top alone"]
        if self.report["task"] == "multilabel":
            decision = self.report["decision"]
            lines.append(f"decision: {decision['spec']} (threshold {decision['threshold']}), fitted on validation")
        if self.behind_cached_top:
            lines.append(f"warning: fine-tuning ended below the cached top it started from ({name}); the "
                         "cached top, or `mlkit ensemble` of cached tops, may be the better model to ship "
                         "(docs/finetune.md)")
        return "\n".join(lines)

    @property
    def behind_cached_top(self):
        """Whether the fine-tuned model's test headline is worse than the cached top's (MAE: higher)."""
        _, finetuned, cached = self.headline
        return finetuned > cached if self.report["task"] == "regression" else finetuned < cached

    @property
    def headline(self):
        """(metric name, fine-tuned value, cached-top value) on the test split."""
        task = self.report["task"]
        name, get = HEADLINE[task]
        return name, get(self.report), get(self.baseline)


def read_log(path):
    """The epoch log's rows, one per epoch (the last kept when a resumed run wrote an epoch twice)."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as handle:
        rows = {int(row["epoch"]): row for row in csv.DictReader(handle) if row.get("epoch", "").isdigit()}
    return [rows[epoch] for epoch in sorted(rows)]


def decide_and_report(cache, fit, test, train_labels, decision="", min_labels=0, max_labels=None):
    """The decision rule fitted on validation scores, and the test report it gives.

    Args:
        cache: the `FeatureCache` (task, label names, regression's target scale).
        fit: (validation scores, labels): what the rule is fitted on.
        test: (test scores, labels): what the report measures.
        train_labels: the training rows' labels (their mean cardinality helps the rule).
        decision, min_labels, max_labels: the multilabel rule (`mlkit evaluate --help`).
            Defaults to "" (cardinality), 0 and None.

    Returns:
        (rule or None for regression, the test report of `evaluate_scores`).
    """
    from mlkit.evaluation.evaluate import evaluate_scores

    (val_scores, val_labels), (test_scores, test_labels) = fit, test
    names = cache.label_names or cache.attrs.get("target_names")
    if cache.task == "regression":
        return None, evaluate_scores(cache.target_scale.unscale(test_scores), test_labels, names, task="regression")
    if cache.task == "multiclass":
        return parse_rule("argmax"), evaluate_scores(test_scores, test_labels, names, task="multiclass")
    spec = decision or "cardinality"
    rule = parse_rule(spec, min_labels=min_labels, max_labels=max_labels)
    rule.fit(val_scores, val_labels, train_cardinality=float(np.asarray(train_labels).sum(axis=1).mean()))
    if not rule.deployable:
        raise MlkitError(f"--decision {spec} needs the true labels; an exported model needs a deployable rule")
    return rule, evaluate_scores(test_scores, test_labels, names, decisions=[rule], fit_scores=val_scores,
                                 fit_labels=val_labels)


class RecordStep:
    """Decision, report, export and record of a trained fine-tuning job (a `_Job`'s last phase)."""

    def scores(self, split):
        """(scores, labels) of one split from the network, rows that failed to decode left out."""
        paths, labels = self.rows.split(split)
        data = self.rows.dataset(paths, None, captions=self.captions(split), batch_size=self.config.batch,
                                 memory_cache=0)
        scores = self.network.predict(data, verbose=0)
        keep = self.rows.readable(paths)
        return scores, labels[keep]

    def cached_scores(self, split):
        """The stage-2 top's scores on the cached features: the baseline fine-tuning must beat.

        A caption top gets its captions encoded as in stage 2 (Python, with
        the run's own vocabulary), not through the network's in-graph vectoriser.
        """
        from mlkit.text import encode_captions
        from mlkit.tuning.top import load_top

        top, config = load_top(self.workdir, self.top_run)
        features, labels = self.cache.load(split, taps=config.tap_list)
        if self.vocabulary:
            captions = self.cache.read("caption", self.cache.indices(split))
            features = {"features": features, "tokens": encode_captions(captions, self.vocabulary)}
        return top.predict(features, batch_size=256, verbose=0), labels

    def report(self, fit, test):
        """The decision rule fitted on validation scores, and the test report it gives."""
        return decide_and_report(self.cache, fit, test, self.rows.split("train")[1], self.config.decision,
                                 self.config.min_labels, self.config.max_labels)

    def evaluate_and_export(self, progress):
        from mlkit.models.network import build_export_model

        if self.config.strategy == "multiworker":
            # Scoring under the strategy is collective (Keras gathers every batch across workers), so the chief
            # scores alone with a local copy of the trained weights, while the workers are gone.
            self.network = self.local_network()
        rule, report = self.report(self.scores("val"), self.scores("test"))
        _, baseline = self.report(self.cached_scores("val"), self.cached_scores("test"))
        with precision_policy(False):
            network = self.float32_network() if self.config.mixed_precision else self.network
            model = build_export_model(network, self.attrs, rule.to_dict() if rule else None, self.task,
                                       self.cache.target_scale)
            remove_stale_temporaries(self.paths["keras"])  # under the run's lock: only killed runs leave them
            with atomic_path(self.paths["keras"]) as partial:
                model.save(partial)
        self.write_log()
        record = self.record(rule, report, baseline)
        write_json(self.paths["json"], record)
        shutil.rmtree(self.work, ignore_errors=True)
        return FinetuneResult(self.run, self.paths["keras"], self.paths["json"], self.paths["csv"], report, baseline)

    def float32_network(self):
        """The trained network rebuilt in float32: an exported model computes in float32 whatever trained it."""
        import keras

        keras.config.set_dtype_policy("float32")
        return self.local_network()

    def local_network(self):
        """The trained network rebuilt outside the distribution strategy, under the current dtype policy."""
        from mlkit.models.network import build_network, rebuild_backbone
        from mlkit.tuning.top import load_top

        backbone, spec = rebuild_backbone(self.attrs, self.config.weights or None)
        top, config = load_top(self.workdir, self.top_run)
        network = build_network(backbone, spec, self.attrs, top, self.vocabulary, config.tap_list)
        network.set_weights(self.network.get_weights())
        return network

    def write_log(self):
        rows = [dict(row, phase=phase) for phase in ("warmup", "main") for row in read_log(self.work / f"{phase}.csv")]
        if not rows:
            return
        columns = ["phase"] + [key for key in rows[-1] if key != "phase"]
        with atomic_path(self.paths["csv"]) as partial, open(partial, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def caption_input(self):
        """What the "caption" input is, for the record (the full vocabulary is in the model's layer config)."""
        if not self.vocabulary:
            return None
        vocabulary = self.vocabulary
        return {"dtype": "string", "shape": [None], "missing": "empty string", "vocabulary_size": vocabulary["size"],
                "max_len": vocabulary["max_len"], "num_words": vocabulary.get("num_words"),
                "stop_words_source": vocabulary.get("stop_words_source"), "branch": self.top_config.branch}

    def record(self, rule, report, baseline):
        import keras
        import tensorflow as tf

        from mlkit.cropping.config import manifest_crop

        attrs = self.attrs
        name, get = HEADLINE[self.task]
        return {
            "run": self.run, "status": "complete", "task": self.task, "top_run": self.top_run,
            "label_names": self.cache.label_names, "target_names": attrs.get("target_names"),
            "decision": rule.to_dict() if rule else parse_rule("identity").to_dict(),
            "headline": {"metric": name, "finetuned": get(report), "cached_top": get(baseline)},
            "test": report, "baseline": baseline,
            "failed_images": dict(self.rows.failures),
            "input": {"dtype": "uint8", "shape": [None, None, None, 3], "image_size": int(attrs["image_size"]),
                      "resize": "bilinear, antialias", "background": attrs.get("background")},
            "inputs": ["image", "caption"] if self.vocabulary else ["image"],
            "caption_input": self.caption_input(),
            "outputs": {"scores": "float32 (N, L)", "labels": "uint8 (N, L) decisions" if self.task != "regression"
                        else "predictions in original units"},
            "cache": {key: attrs.get(key) for key in ("backbone", "weights", "weights_sha256", "image_size", "preprocess",
                                                      "pooling", "dataset", "subset", "manifest_sha256")},
            "cache_path": str(self.cache.path),
            # Trained on `mlkit crop`'s crops: predict crops its images with these settings first.
            "crop": manifest_crop(attrs.get("manifest_path")),
            "top_config": self.top_config.to_dict(), "finetune": asdict(self.config),
            "trainable": self.trainable_summary,
            "target_scale": self.cache.target_scale and self.cache.target_scale.to_dict(),
            "versions": {"mlkit": __version__, "keras": keras.__version__, "tensorflow": tf.__version__},
        }
