"""Ensembles from the cache: the best tuned tops averaged on the frozen backbone, decided and exported.

tune-top trains many tops on one cache, and averaging the scores of the best
K of them costs nothing at inference beyond their heads: the backbone runs
once and every head reads its features (`mlkit.models.network.average_tops`).
`ensemble` takes the K best runs tuned on this very cache (or runs named),
scores validation and test on the cached features through the averaged top,
fits the label decision on validation, reports on test beside the best member
alone, and writes, with no training:

    models/<run>.keras   uint8 images of any size -> {"scores", "labels"} (backbone, K heads, mean, decision)
    models/<run>.json    members, labels, the fitted rule, test metrics (ensemble, each member), the config

`<run>` is the best member's run name with the option `ens-K`
(`mlkit.runs`), e.g. `icons_all-160px_mobilenetv2_inet_avg_1x512d2_lr13_b64_ens-3_opt-adam`.
The exported model is a fine-tuned model's twin: `mlkit predict` and
`mlkit export` take it as they take one.

Members must read image features alone: a caption top (tune-top
--captions) is refused when named, and passed over by best:K.
"""

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlkit import __version__
from mlkit.bottlenecks.cache import FeatureCache, open_cache
from mlkit.errors import MlkitError
from mlkit.files import atomic_path, check_workdir, remove_stale_temporaries, write_json
from mlkit.locks import hold_lock
from mlkit.models.finetune import select_tops
from mlkit.models.record import HEADLINE, decide_and_report
from mlkit.options import defaults_of, option
from mlkit.runs import RunNameError, parse_run_name
from mlkit.workspace import run_paths

log = logging.getLogger(__name__)

# The run-name option that marks an ensemble of K tops (`_ens-K`).
ENSEMBLE_OPTION = "ens"
# Tops score cached features in batches this large: a head is small and the features are in memory.
SCORE_BATCH = 1024


@dataclass
class EnsembleConfig:
    """The settings of one ensemble; saved in `models/<run>.json`."""

    top: str = option("best:3", "the tops averaged: best:K, the K best runs in WORKDIR/tuning/summary.csv tuned on "
                                "this very cache (image-only tops; summary order, i.e. the last tune-top's "
                                "--objective), or run names joined by ','")
    decision: str = option("", "multilabel rule fitted on validation of the averaged scores: cardinality, fbeta:B, "
                               "per-class:B, threshold:T, topk:K (see `mlkit evaluate --help`)", shown="cardinality")
    min_labels: int = option(0, "at least this many labels per image")
    max_labels: int = option(None, "at most this many labels per image", shown="no limit")
    weights: str = option("", "where the backbone weights come from, if not where the cache says (must hash the "
                              "same)", shown="the cache's")

    def __post_init__(self):
        """Refuses a `top` that cannot name any tops (MlkitError); which runs it names is read later."""
        text = str(self.top).strip()
        if not text:
            raise MlkitError("--top: name best:K or runs joined by ','")
        self.top = text


ENSEMBLE = defaults_of(EnsembleConfig)


@dataclass
class EnsembleResult:
    """What `ensemble` made and measured."""

    run: str
    model_path: Path
    json_path: Path
    members: list
    report: dict = field(repr=False)
    baseline: dict = field(repr=False)
    member_headlines: dict = field(repr=False, default_factory=dict)
    seconds: float = 0.0

    @property
    def headline(self):
        """(metric name, ensemble value, best member's value) on the test split."""
        name, get = HEADLINE[self.report["task"]]
        return name, get(self.report), get(self.baseline)

    def describe(self):
        """Where the model went and the test metric beside each member's, for the console."""
        name, averaged, best = self.headline
        lines = [f"model: {self.model_path}", f"record: {self.json_path}",
                 f"test {name}: {averaged:.4f} for the {len(self.members)} tops averaged vs {best:.4f} for the best "
                 "alone"]
        lines += [f"  member {rank}: {value:.4f}  {run}" for rank, (run, value) in
                  enumerate(self.member_headlines.items(), 1)]
        if self.report["task"] == "multilabel":
            decision = self.report["decision"]
            lines.append(f"decision: {decision['spec']} (threshold {decision['threshold']}), fitted on validation")
        return "\n".join(lines)


def ensemble(cache, top=ENSEMBLE["top"], workdir=".", *, decision=ENSEMBLE["decision"],
             min_labels=ENSEMBLE["min_labels"], max_labels=ENSEMBLE["max_labels"], weights=ENSEMBLE["weights"],
             overwrite=False):
    """Averages tuned tops on the cache's frozen backbone, fits the decision, and exports one model.

    Args:
        cache: path of the bottleneck cache (.h5) the tops were tuned on, or an open `FeatureCache`.
        top: "best:K" (the first K runs of `tuning/summary.csv` tuned on this
            very cache that read image features alone) or run names joined by
            ",". Defaults to "best:3".
        workdir: the workspace holding `tuning/`; `models/` is written there. Defaults to ".".
        decision, min_labels, max_labels, weights: the `EnsembleConfig`
            settings (`mlkit ensemble --help`).
        overwrite: redo a finished ensemble. Defaults to False; one whose
            members have changed (best:K after more tuning) is redone anyway.

    Returns:
        An `EnsembleResult`.

    Example:
        result = ensemble("bottlenecks/icons_all_mobilenetv2_inet_avg.h5", "best:3")
        print(result.headline)   # ('micro F1', 0.58, 0.55)
    """
    started = time.perf_counter()
    config = EnsembleConfig(top=str(top), decision=decision or "", min_labels=min_labels, max_labels=max_labels,
                            weights=weights or "")
    cache = cache if isinstance(cache, FeatureCache) else open_cache(cache)
    workdir = check_workdir(workdir)
    members = select_tops(workdir, cache, config.top, image_only=True, same_taps=True)
    run = ensemble_run_name(members)
    paths = run_paths(workdir, run, "models")
    paths["keras"].parent.mkdir(parents=True, exist_ok=True)
    with hold_lock(paths["work"].with_name(f".{run}.lock"), f"ensemble {run}"):
        done = finished_ensemble(paths, run, members)
        if done is not None and not overwrite:
            log.info("%s is already made: %s", run, paths["json"])
            return done
        result = build_ensemble(cache, workdir, run, members, config, paths)
    result.seconds = time.perf_counter() - started
    return result


def ensemble_run_name(members):
    """The best member's run name with `ens-K` added: K tops averaged."""
    best = parse_run_name(members[0])
    if best.frozen is not None:
        raise MlkitError(f"{members[0]} is a fine-tuned run; an ensemble averages tuned tops from tuning/")
    options = dict(best.options)
    if ENSEMBLE_OPTION in options:
        raise RunNameError(f"top run {members[0]} already has the option {ENSEMBLE_OPTION}-")
    options[ENSEMBLE_OPTION] = str(len(members))
    return str(type(best)(**{**asdict(best), "options": options}))


def finished_ensemble(paths, run, members):
    """The finished ensemble's result, or None (also when it was made of other members)."""
    if not (paths["json"].exists() and paths["keras"].exists()):
        return None
    record = json.loads(paths["json"].read_text())
    if record.get("status") != "complete":
        return None
    if record.get("members") != list(members):
        log.info("%s was made of other tops (%s); remaking it of %s", run, ", ".join(record.get("members") or []),
                 ", ".join(members))
        return None
    return EnsembleResult(run, paths["keras"], paths["json"], record["members"], record["test"], record["baseline"],
                          record.get("member_headlines", {}))


def load_members(workdir, members, cache):
    """(tops, their `TopConfig`s): each tuned on this very cache and reading image features alone."""
    from mlkit.models.network import check_top_matches
    from mlkit.tuning.top import load_top

    tops, configs = [], []
    for run in members:
        top, config = load_top(workdir, run)
        check_top_matches(config, cache)
        if config.text:
            raise MlkitError(f"top {run} reads captions (tune-top --captions/--text-only); an ensemble averages "
                             "tops that read image features alone: name image-only runs, or use --top best:K, "
                             "which passes over caption runs")
        if configs and config.tap_list != configs[0].tap_list:
            raise MlkitError(f"top {run} reads the taps {'+'.join(config.tap_list)} and {members[0]} reads "
                             f"{'+'.join(configs[0].tap_list)}; an ensemble's members share one feature input: "
                             "name runs with the same taps, or use --top best:K, which takes the best run's taps")
        tops.append(top)
        configs.append(config)
    return tops, configs


def split_scores(cache, averaged, tops, split, taps=("last",)):
    """(the averaged top's scores, each member's scores, labels) of one split's cached features (of `taps`)."""
    features, labels = cache.load(split, taps=taps)
    if not len(labels):
        raise MlkitError(f"{cache.path} has no {split} rows; an ensemble fits its decision on val and reports on "
                         "test (mlkit data split)")
    each = [top.predict(features, batch_size=SCORE_BATCH, verbose=0) for top in tops]
    return averaged.predict(features, batch_size=SCORE_BATCH, verbose=0), each, labels


def build_ensemble(cache, workdir, run, members, config, paths):
    """Scores, decisions, reports, the exported model and the record of one ensemble."""
    from mlkit.models.network import average_tops

    tops, configs = load_members(workdir, members, cache)
    averaged = average_tops(tops)
    (val, val_each, val_labels), (test, test_each, test_labels) = (
        split_scores(cache, averaged, tops, split, configs[0].tap_list) for split in ("val", "test"))
    train_labels = cache.read("labels", cache.indices("train"))
    settings = (config.decision, config.min_labels, config.max_labels)
    rule, report = decide_and_report(cache, (val, val_labels), (test, test_labels), train_labels, *settings)
    member_reports = [decide_and_report(cache, (v, val_labels), (t, test_labels), train_labels, *settings)[1]
                      for v, t in zip(val_each, test_each)]
    name, get = HEADLINE[cache.task]
    member_headlines = {member: get(member_report) for member, member_report in zip(members, member_reports)}
    write_ensemble_model(cache, averaged, rule, config, paths["keras"], configs[0].tap_list)
    record = ensemble_record(cache, run, members, configs, config, rule, report, member_reports[0], member_headlines)
    write_json(paths["json"], record)
    return EnsembleResult(run, paths["keras"], paths["json"], list(members), report, member_reports[0],
                          member_headlines)


def write_ensemble_model(cache, averaged, rule, config, path, taps=("last",)):
    """Backbone (as the cache made its features) -> the averaged heads -> decision, saved to `path`."""
    from mlkit.models.network import build_export_model, build_network, rebuild_backbone

    backbone, spec = rebuild_backbone(cache.attrs, config.weights or None)
    network = build_network(backbone, spec, cache.attrs, averaged, taps=taps)
    model = build_export_model(network, cache.attrs, rule.to_dict() if rule else None, cache.task,
                               cache.target_scale)
    remove_stale_temporaries(path)  # under the run's lock: only killed runs leave them
    with atomic_path(path) as partial:
        model.save(partial)


def ensemble_record(cache, run, members, configs, config, rule, report, baseline, member_headlines):
    """`models/<run>.json`: what `predict` and a person need, in the keys a fine-tuned model's record uses."""
    import keras
    import tensorflow as tf

    from mlkit.evaluation.decisions import parse_rule

    attrs = cache.attrs
    name, get = HEADLINE[cache.task]
    return {
        "run": run, "status": "complete", "kind": "ensemble", "task": cache.task, "members": list(members),
        "label_names": cache.label_names, "target_names": attrs.get("target_names"),
        "decision": rule.to_dict() if rule else parse_rule("identity").to_dict(),
        "headline": {"metric": name, "ensemble": get(report), "best_member": get(baseline)},
        "member_headlines": member_headlines, "test": report, "baseline": baseline,
        "input": {"dtype": "uint8", "shape": [None, None, None, 3], "image_size": int(attrs["image_size"]),
                  "resize": "bilinear, antialias", "background": attrs.get("background")},
        "inputs": ["image"],
        "outputs": {"scores": "float32 (N, L), the mean of the members' scores",
                    "labels": "uint8 (N, L) decisions" if cache.task != "regression" else "predictions in original units"},
        "cache": {key: attrs.get(key) for key in ("backbone", "weights", "weights_sha256", "image_size", "preprocess",
                                                  "pooling", "dataset", "subset", "manifest_sha256")},
        "cache_path": str(cache.path), "top_configs": [top_config.to_dict() for top_config in configs],
        "ensemble": asdict(config),
        "target_scale": cache.target_scale and cache.target_scale.to_dict(),
        "versions": {"mlkit": __version__, "keras": keras.__version__, "tensorflow": tf.__version__},
    }
