"""Stage 3: fine-tune a tuned top end to end on the images, decide labels, and export.

`finetune` rebuilds the backbone exactly as the cache records it (its weights
hash must match), puts the stage-2 top on it, trains through tf.data with
augmentation, fits the label decision on the validation split, reports on
the test split beside the cached top's own result, and writes:

    models/<run>.keras   uint8 images of any size -> {"scores", "labels"}
    models/<run>.json    labels, the fitted rule, test metrics, the baseline, the resolved config
    models/<run>.csv     the epoch log

A caption top (image + caption, `tune-top --captions`) is fine-tuned with its
caption branch: the network reads each row's caption string from the cache
beside the image and tokenises it in the graph with the top run's own
vocabulary, and the exported model takes {"image": uint8, "caption": string}.
A caption-only top (`--text-only`) has no backbone to fine-tune and is
refused; `--top best` passes over such runs.

`<run>` is the top's run name plus the fine-tuning suffix
`_<frozen>_lr<XY>_b<B>_<aug>` (see `mlkit.runs`). A killed run resumes from its
last finished epoch (Keras's BackupAndRestore, kept in `models/.<run>.work/`,
with every weights file written atomically: `mlkit.models.checkpoints`); a
finished one is not redone.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mlkit.bottlenecks.cache import FeatureCache, open_cache
from mlkit.branches import branch_of
from mlkit.compat import average_logs_over_workers, build_from_local_batch
from mlkit.errors import MlkitError
from mlkit.evaluation.decisions import parse_rule
from mlkit.files import StrPath, check_workdir, sweep_temporaries, write_json
from mlkit.locks import hold_lock
from mlkit.models.augment import augmentation_layers, parse_augment
from mlkit.models.checkpoints import backup_and_restore, best_weights_checkpoint, save_weights_atomic
from mlkit.models.distribute import STRATEGIES, lost_worker, make_strategy, precision_policy, worker_role
from mlkit.models.image_rows import DEFAULT_MEMORY_CACHE, ImageRows, epoch_order
from mlkit.models.record import FinetuneResult, RecordStep, read_log
from mlkit.optimizers import make_optimizer
from mlkit.options import defaults_of, option
from mlkit.runs import encode_lr, parse_run_name
from mlkit.vocabulary import OPTIMIZERS
from mlkit.workspace import run_paths

log = logging.getLogger(__name__)

# Added to a phase's epoch to pick its shuffle order (mlkit.models.image_rows.epoch_order): the main
# phase's first epoch does not repeat the warm-up's first order.
SHUFFLE_OFFSET = {"warmup": 0, "main": 1 << 20}
# Gradients are clipped to this global norm, a guard for SGD steps: the top standardises its
# features with frozen statistics, so a feature that was near constant in the cache (random
# weights) turns a large step into a diverging run. With batch norm kept in inference mode a
# pretrained MobileNetV2's first gradients have a norm of 0.9-1.0 (125 when batch norm trained),
# and Adam's steps barely change under a global rescale of its gradients.
CLIPNORM = 1.0


@dataclass
class FinetuneConfig:
    """The fine-tuning settings; saved in `models/<run>.json` beside the top's config."""

    # The defaults are the settings measured to work on a pretrained backbone (BENCHMARKS.md,
    # "Transfer quality"): the last quarter of the backbone trains at Adam's 1e-4 from the
    # cached top, which already is a trained head, so no warm-up is needed.
    top: str = option("best", "a run name from WORKDIR/tuning, or 'best': the first in tuning/summary.csv tuned on "
                              "this cache")
    freeze: str = option("75%", "leading backbone layers kept frozen: a share of its layers (75% trains the last "
                                "quarter), a number (e.g. 15), a block name to train from (e.g. block5 for VGG16, "
                                "block_13 for MobileNetV2), or 'all' (train the head alone on augmented images). "
                                "Batch norm keeps its statistics whatever is unfrozen")
    lr: float = option(1e-4, "learning rate")
    lr_decay: float = option(1.0, "layer-wise learning-rate decay F: the backbone's last block trains at --lr, "
                                  "each block below at F times the one above, the embeddings (a CNN's stem) "
                                  "lowest; the top at --lr. 1 is off: 0.8 did not help MobileNetV2 (docs/finetune.md); "
                                  "0.65-0.75 are the BEiT/DINOv2 recipes' values for ViTs, unmeasured here")
    batch: int = option(32, "batch size")
    epochs: int = option(12, "most epochs")
    warmup_epochs: int = option(0, "epochs training the head alone before unfreezing (fastai's fine_tune; the "
                                   "tuned top already is a trained head)")
    augment: str = option("hwzf", "augmentation codes (see below), or 'none'")
    optimizer: str = option("adam", "adam, or sgd with --momentum", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD momentum")
    patience: int = option(3, "early stopping patience on val_loss; the best epoch is kept")
    decision: str = option("", "multilabel rule fitted on validation: cardinality, fbeta:B, per-class:B, "
                               "threshold:T, topk:K (see `mlkit evaluate --help`)", shown="cardinality")
    min_labels: int = option(0, "at least this many labels per image")
    max_labels: int | None = option(None, "at most this many labels per image", shown="no limit")
    weights: str = option("", "where the backbone weights come from, if not where the cache says (must hash the "
                              "same)", shown="the cache's")
    mixed_precision: bool = option(False, "mixed_float16 on a GPU (mixed_bfloat16 on CPU); the exported model "
                                          "stays float32")
    jit: bool = option(False, "compile the training step with XLA (not for caption tops: XLA has no string ops)")
    strategy: str = option("none", "tf.distribute: mirrored (all local GPUs) or multiworker (workers from "
                                   "TF_CONFIG)", choices=STRATEGIES)
    seed: int = option(0, "random seed")
    no_tensorboard: bool = option(False, "write no TensorBoard event files (models/<run>/: per-epoch scalars, "
                                         "warm-up under warmup/, and the run-name fields as hparams)")
    memory_cache: int = DEFAULT_MEMORY_CACHE
    frozen: object = None

    def __post_init__(self):
        """Refuses any setting that cannot be used (MlkitError), so a bad config cannot exist."""
        self.validate()

    def validate(self):
        """Checks the settings again (after one was changed in place); returns the config."""
        self.augment = parse_augment(self.augment)
        for name, minimum in (("batch", 1), ("epochs", 1), ("warmup_epochs", 0), ("patience", 1)):
            if int(getattr(self, name)) < minimum:
                raise MlkitError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= {minimum}")
        if not float(self.lr) > 0:
            raise MlkitError(f"--lr {self.lr}: learning rates must be positive")
        encode_lr(self.lr)
        if not 0 < float(self.lr_decay) <= 1:
            raise MlkitError(f"--lr-decay {self.lr_decay}: a factor per block in (0, 1]; 1 is off")
        encode_lr(self.lr_decay)
        if self.optimizer not in OPTIMIZERS:
            raise MlkitError(f"--optimizer {self.optimizer!r}: use {' or '.join(OPTIMIZERS)}")
        if self.strategy not in STRATEGIES:
            raise MlkitError(f"--strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        check_freeze(self.freeze)
        if self.decision:  # refused now, not after training (mlkit.models.record fits it)
            try:
                rule = parse_rule(self.decision, min_labels=self.min_labels, max_labels=self.max_labels)
            except MlkitError as error:
                raise MlkitError(f"--decision {self.decision}: {error}") from None
            if not rule.deployable:
                raise MlkitError(f"--decision {self.decision} needs the true labels; an exported model needs a "
                                 "deployable rule")
        return self

    def run_options(self):
        """Fine-tuning settings that change what is trained, as run-name options."""
        options = {}
        if self.warmup_epochs:
            options["wu"] = str(self.warmup_epochs)
        if self.optimizer != "adam":
            options["ftopt"] = self.optimizer
        if float(self.lr_decay) != 1:
            options["lrd"] = encode_lr(self.lr_decay)  # lrd-81 is 0.8, as lr81 is (mlkit.runs)
        return options


def check_freeze(freeze):
    """Refuses a percentage --freeze outside 0-100% (what no backbone has), before any work."""
    text = str(freeze).strip().lower()
    if not text.endswith("%"):
        return
    try:
        share = float(text[:-1])
    except ValueError:
        share = -1.0
    if not 0 <= share <= 100:
        raise MlkitError(f"--freeze {freeze}: a percentage of the backbone's layers is between 0% and 100%")


# The Python API's defaults are FinetuneConfig's (mlkit.options): written once, there.
FINETUNE = defaults_of(FinetuneConfig)


def finetune(
    cache: StrPath | FeatureCache, top: str = FINETUNE["top"], workdir: StrPath = ".", *,
    freeze: str = FINETUNE["freeze"], lr: float = FINETUNE["lr"], lr_decay: float = FINETUNE["lr_decay"],
    batch: int = FINETUNE["batch"], epochs: int = FINETUNE["epochs"],
    warmup_epochs: int = FINETUNE["warmup_epochs"], augment: str = FINETUNE["augment"],
    optimizer: str = FINETUNE["optimizer"], momentum: float = FINETUNE["momentum"],
    patience: int = FINETUNE["patience"], decision: str = FINETUNE["decision"],
    min_labels: int = FINETUNE["min_labels"], max_labels: int | None = FINETUNE["max_labels"],
    weights: str = FINETUNE["weights"], mixed_precision: bool = FINETUNE["mixed_precision"],
    jit: bool = FINETUNE["jit"], strategy: str = FINETUNE["strategy"], seed: int = FINETUNE["seed"],
    memory_cache: int = FINETUNE["memory_cache"],
    no_tensorboard: bool = FINETUNE["no_tensorboard"], image_root: StrPath | None = None, overwrite: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tunes a tuned top on its backbone end to end, fits the decision, and exports the model.

    Args:
        cache: path of the bottleneck cache (.h5) the top was tuned on, or an open `FeatureCache`.
        top: a run name from `tuning/`, or "best" (first in `tuning/summary.csv`
            among this cache's runs that have image features). An image +
            caption top gives a model of two inputs, image and caption; a
            caption-only top is refused. Defaults to "best".
        workdir: the workspace holding `tuning/`; `models/` is written there. Defaults to ".".
        image_root: folder the cache's relative image paths resolve against.
            Defaults to the folder of the manifest the cache was made from.
        freeze, lr, lr_decay, batch, epochs, warmup_epochs, augment, optimizer, momentum,
            patience, decision, min_labels, max_labels, weights, mixed_precision,
            jit, strategy, seed, no_tensorboard: the `FinetuneConfig` settings (each field says
            what it does; `mlkit finetune --help` prints them). Their defaults
            were measured on a pretrained backbone: the last quarter of the
            backbone ("75%") trains with Adam at 1e-4, batch 32, up to 12 epochs
            with patience 3, augmentation "hwzf", no warm-up.
        memory_cache: bytes of decoded images kept in memory. Defaults to 2 GiB.
        overwrite: redo a finished run. Defaults to False.
        progress: show Keras's progress bars. Defaults to True.

    Returns:
        A `FinetuneResult`; None on a multi-worker run's non-chief workers,
        which train in step with the chief and leave writing to it.

    Example:
        result = finetune("bottlenecks/stamps_all_mobilenetv2_inet_avg.h5")   # the defaults
        print(result.headline)   # ('micro F1', 0.64, 0.55)
        finetune("bottlenecks/synth_all_vgg16_inet_avg.h5", freeze="block5", optimizer="sgd", lr=1e-3)
    """
    started = time.perf_counter()
    config = FinetuneConfig(
        top=str(top), freeze=freeze, lr=lr, lr_decay=lr_decay, batch=batch, epochs=epochs, warmup_epochs=warmup_epochs, augment=augment,
        optimizer=optimizer, momentum=momentum, patience=patience, decision=decision or "", min_labels=min_labels,
        max_labels=max_labels, weights=weights or "", mixed_precision=mixed_precision, jit=jit, strategy=strategy,
        seed=seed, memory_cache=memory_cache, no_tensorboard=no_tensorboard,
    )
    cache = cache if isinstance(cache, FeatureCache) else open_cache(cache)
    workdir = check_workdir(workdir)
    top_run = select_top(workdir, cache, top)
    with precision_policy(config.mixed_precision):
        strategy = make_strategy(config.strategy)
        job = _Job(cache, workdir, top_run, config, strategy, image_root)
        if not job.chief:
            return job.train_as_worker(progress)
        # One process per run: two would share `models/.<run>.work/` and overwrite each other's checkpoints.
        with hold_lock(job.work.with_name(f".{job.run}.lock"), f"fine-tuning run {job.run}"):
            done = job.finished()
            if done is not None and not overwrite:
                log.info("%s is already fine-tuned: %s", job.run, job.paths["json"])
                return done
            if overwrite:
                shutil.rmtree(job.work, ignore_errors=True)
            # This run's temporaries only: models/ holds other runs, each under its own lock.
            sweep_temporaries(job.paths["keras"].parent, {path.name for path in job.paths.values()})
            if job.work.is_dir():
                sweep_temporaries(job.work)
            job.train(progress)
            result = job.evaluate_and_export(progress)
    result.seconds = time.perf_counter() - started
    return result


def select_top(workdir, cache, top):
    """The top's run name: given, or the best in `tuning/summary.csv` tuned on this very cache.

    The summary ranks every run in the folder; its `cache` column and each
    run's record (the identity of the cache it was tuned on) keep the runs of
    other caches, and of an earlier cache of the same name, out.
    """
    text = str(top).strip()
    if text != "best" and not text.startswith("best:"):
        parse_run_name(text)
        return text
    runs = select_tops(workdir, cache, text)
    if len(runs) > 1:
        raise MlkitError(f"--top {text}: finetune trains one top on the backbone; to average the {len(runs)} best "
                         f"tops on the frozen backbone, run `mlkit ensemble {cache.path} --top {text}`")
    return runs[0]


def select_tops(workdir, cache, top, image_only=False, same_taps=False):
    """Run names for `--top best:K` (the K best tuned on this very cache) or `RUN,RUN,...`.

    `best:K` takes the first K runs of `tuning/summary.csv` that were tuned on
    this cache (`ranked_tops`; with `image_only`, caption tops of either kind
    are passed over; with `same_taps`, so are runs that read other taps than
    the best run, since an ensemble's members share one feature input);
    named runs are taken as given (their cache is checked when they are loaded).

    Raises:
        MlkitError: for K < 1, for a K larger than the runs there are, or for a name that is not a run name.
    """
    text = str(top).strip()
    if text == "best" or text.startswith("best:"):
        count = text.partition(":")[2] or "1"
        if not count.isdigit() or int(count) < 1:
            raise MlkitError(f"--top {text}: K in best:K is how many of the best runs to take, a whole number >= 1 "
                             "(e.g. best:3)")
        runs, skipped = ranked_tops(workdir, cache, image_only)
        if same_taps and runs:
            taps = parse_run_name(runs[0]).option("taps")
            other_taps = [run for run in runs if parse_run_name(run).option("taps") != taps]
            runs = [run for run in runs if run not in other_taps]
            skipped = [*skipped, f"{len(other_taps)} run(s) reading other taps than the best"] if other_taps else skipped
        if len(runs) < int(count):
            summary = Path(workdir) / "tuning" / "summary.csv"
            other = f" other than {' and '.join(skipped)}" if skipped else ""
            if not runs:
                raise MlkitError(f"{summary} lists no finished run tuned on {cache.path.name}{other}; run "
                                 f"`mlkit tune-top {cache.path}`")
            raise MlkitError(f"--top {text}: {summary} lists only {len(runs)} finished run(s) tuned on "
                             f"{cache.path.name}{other}; ask for best:{len(runs)} or fewer, or tune more tops "
                             f"(`mlkit tune-top {cache.path}` with more values per axis)")
        return runs[: int(count)]
    runs = [name.strip() for name in text.split(",") if name.strip()]
    if not runs:
        raise MlkitError("--top: name a run, several joined by ',', or best:K")
    if len(set(runs)) < len(runs):
        raise MlkitError(f"--top {text}: a run is named twice")
    for run in runs:
        parse_run_name(run)
    return runs


def ranked_tops(workdir, cache, image_only=False):
    """(runs tuned on this very cache that have image features, best first; why others were passed over).

    The order is `tuning/summary.csv`'s; the `cache` column and each run's
    record (the identity of the cache it was tuned on) keep the runs of other
    caches, and of an earlier cache of the same name, out. With `image_only`
    image + caption runs are passed over too (an ensemble averages image-only tops).
    """
    summary = Path(workdir) / "tuning" / "summary.csv"
    if not summary.exists():
        raise MlkitError(f"--top best needs {summary}; run `mlkit tune-top {cache.path}` first, or name a run")
    import pandas as pd

    from mlkit.bottlenecks.cache import identity_differences

    table = pd.read_csv(summary, keep_default_na=False)
    if "cache" in table:
        table = table[table["cache"] == cache.path.name]
    runs, caption_only, captioned, rebuilt = [], 0, 0, 0
    for run in table["run"]:
        record = run_paths(workdir, run)["json"]
        if not record.exists():
            continue
        config = json.loads(record.read_text())["config"]
        if Path(config.get("cache", "")).name != cache.path.name:
            continue
        if identity_differences(config.get("cache_identity") or {}, cache.identity):
            rebuilt += 1
        elif branch_of(config.get("text"), config.get("text_only")) == "caption":
            caption_only += 1
        elif image_only and config.get("text"):
            captioned += 1
        else:
            runs.append(str(run))
    skipped = [f"{caption_only} caption-only run(s), which have no backbone to fine-tune"] if caption_only else []
    skipped += [f"{captioned} image + caption run(s), which ensembles do not take"] if captioned else []
    skipped += [f"{rebuilt} run(s) tuned on an earlier {cache.path.name}, since rebuilt"] if rebuilt else []
    return runs, skipped


def finetune_run_name(top_run, frozen, config):
    """The top's run name with the fine-tuning suffix and options added."""
    run = parse_run_name(top_run)
    options = dict(run.options)
    clash = sorted(set(options) & set(config.run_options()))
    if clash:
        raise MlkitError(f"top run {top_run} already has option(s) {', '.join(clash)}")
    options.update(config.run_options())
    return str(type(run)(**{**asdict(run), "frozen": frozen, "ft_lr": float(config.lr), "ft_batch": int(config.batch),
                            "aug": config.augment, "options": options}))


def refuse_caption_only(top_config):
    """A caption-only top has no image features, so no backbone under it to fine-tune."""
    if top_config.branch == "caption":
        raise MlkitError(
            f"top {top_config.run} is caption-only (tune-top --text-only): it takes no image features, so there is "
            "no backbone to fine-tune or export with it. Fine-tune an image or image + caption top instead "
            "(--top RUN, or --top best, which passes over caption-only runs)")


class _Job(RecordStep):
    """One fine-tuning run: its model, data, files and phases."""

    def __init__(self, cache, workdir, top_run, config, strategy, image_root):
        import keras

        from mlkit.models.network import build_network, check_top_matches, rebuild_backbone, resolve_freeze
        from mlkit.tuning.top import load_top

        self.cache, self.workdir, self.config, self.strategy = cache, workdir, config, strategy
        self.attrs = cache.attrs
        with strategy.scope():
            self.backbone, self.spec = rebuild_backbone(self.attrs, config.weights or None)
            self.top, self.top_config = load_top(workdir, top_run)
            check_top_matches(self.top_config, cache)
            refuse_caption_only(self.top_config)
            self.vocabulary = self.top_config.vocabulary if self.top_config.text else None
            if self.vocabulary and config.jit:
                raise MlkitError(f"--jit compiles the whole training step with XLA, which has no string ops, and "
                                 f"top {top_run} tokenises its captions inside the network: drop --jit for caption "
                                 "tops")
            self.network = build_network(self.backbone, self.spec, self.attrs, self.top, self.vocabulary,
                                         self.top_config.tap_list)
        config.frozen = resolve_freeze(self.backbone, config.freeze)
        self.task = cache.task
        self.top_run = top_run
        self.run = finetune_run_name(top_run, config.frozen, config)
        self.paths = run_paths(workdir, self.run, "models")
        self.paths["keras"].parent.mkdir(parents=True, exist_ok=True)
        self.chief, self.role = worker_role(strategy)
        # Checkpoints of a resumed run are the chief's; other workers read them and write theirs elsewhere.
        self.chief_work = self.work = self.paths["work"]
        if not self.chief:
            self.work = Path(tempfile.mkdtemp(prefix=f"mlkit-{self.role.replace(':', '')}-"))
        self.rows = ImageRows(cache, image_root)
        keras.utils.set_random_seed(config.seed)

    # -- state ------------------------------------------------------------------------------
    def finished(self):
        """The finished run's result, or None."""
        path = self.paths["json"]
        if not (path.exists() and self.paths["keras"].exists()):
            return None
        record = json.loads(path.read_text())
        if record.get("status") != "complete":
            return None
        return FinetuneResult(self.run, self.paths["keras"], path, self.paths["csv"], record["test"], record["baseline"])

    def captions(self, split):
        """The split's caption strings for a caption top, else None."""
        return self.rows.split_captions(split) if self.vocabulary else None

    def dataset(self, split, training):
        paths, labels = self.rows.split(split)
        config = self.config
        augment = augmentation_layers(config.augment, config.seed) if training else ()
        return self.rows.dataset(paths, self.cache.targets(labels), captions=self.captions(split), batch_size=config.batch,
                                 shuffle=training, augment=augment, seed=config.seed, memory_cache=config.memory_cache)

    # -- training ---------------------------------------------------------------------------
    def compile(self):
        from mlkit.models.network import layerwise_lr_scales
        from mlkit.tuning.top import make_loss

        config = self.config
        with self.strategy.scope():
            optimizer = make_optimizer(config.optimizer, config.lr, config.momentum, clipnorm=CLIPNORM,
                                       lr_scales=layerwise_lr_scales(self.backbone, config.lr_decay))
            pos_weight = np.asarray(self.top_config.pos_weight, "float32") if self.top_config.pos_weight else None
            self.network.compile(optimizer=optimizer, loss=make_loss(self.top_config, self.network.output_shape[-1], pos_weight),
                                 jit_compile=bool(config.jit))
        if config.strategy == "multiworker":
            build_from_local_batch(self.network)
            average_logs_over_workers()

    def train(self, progress):
        """Warm-up (head only) then the main phase; each resumes from its last finished epoch."""
        from mlkit.models.network import apply_freeze

        config = self.config
        self.work.mkdir(parents=True, exist_ok=True)
        write_json(self.work / "config.json", {"run": self.run, "top": self.top_run, "finetune": asdict(config)})
        apply_freeze(self.network, self.backbone, config.frozen)
        self.trainable_summary = {"trainable_weights": int(sum(np.prod(w.shape) for w in self.network.trainable_weights)),
                                  "frozen_layers": config.frozen}
        trained = self.work / "trained.weights.h5"
        if (self.chief_work / trained.name).exists():
            self.network.load_weights(self.chief_work / trained.name)
            return
        train, val = self.dataset("train", True), self.dataset("val", False)
        warm = self.work / "warmup.weights.h5"
        if config.warmup_epochs and config.frozen != "all":
            if (self.chief_work / warm.name).exists():
                self.network.load_weights(self.chief_work / warm.name)
            else:
                apply_freeze(self.network, self.backbone, "all")
                self.compile()
                self.fit(train, val, config.warmup_epochs, "warmup", progress)
                save_weights_atomic(self.network, warm)
        apply_freeze(self.network, self.backbone, config.frozen)
        log.info("fine-tuning %s: %s backbone layers frozen, %d trainable weights", self.run, config.frozen,
                 self.trainable_summary["trainable_weights"])
        self.compile()
        self.fit(train, val, config.epochs, "main", progress)
        best = self.work / "best.weights.h5"
        if best.exists():
            self.network.load_weights(best)
        if not all(np.isfinite(np.asarray(w)).all() for w in self.network.weights):
            shutil.rmtree(self.work / "backup_main", ignore_errors=True)
            raise MlkitError(f"fine-tuning {self.run} diverged (the loss became NaN before any epoch improved on "
                             "validation); lower --lr, freeze more layers (--freeze) or add --warmup-epochs")
        # Marks the training as done: a crash while exporting resumes there, not from epoch 0.
        save_weights_atomic(self.network, trained)

    def fit(self, train, val, epochs, phase, progress):
        import keras

        log_path = self.work / f"{phase}.csv"
        previous = [float(row["val_loss"]) for row in read_log(log_path) if row.get("val_loss")]
        callbacks = [
            backup_and_restore(self.work / f"backup_{phase}", restore_from=self.chief_work / f"backup_{phase}"),
            epoch_order(self.rows, SHUFFLE_OFFSET[phase]),
            keras.callbacks.CSVLogger(str(log_path), append=True),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.config.patience),
            keras.callbacks.TerminateOnNaN(),
        ]
        if phase == "main":
            callbacks.insert(1, best_weights_checkpoint(self.work / "best.weights.h5", "val_loss",
                                                        min(previous) if previous else None))
        if self.chief and not self.config.no_tensorboard:
            from mlkit.tensorboard_logs import WARMUP, EpochEvents

            # models/<run>/, beside models/<run>.csv; a resumed run appends, as its CSV does.
            prefix = "" if phase == "main" else f"{WARMUP}/"
            callbacks.append(EpochEvents(self.paths["csv"].with_suffix(""), self.run, prefix))
        try:
            self.network.fit(train, validation_data=val, epochs=epochs, callbacks=callbacks, shuffle=False,
                             verbose=1 if progress else 2)
        except Exception as error:
            if self.config.strategy != "multiworker" or not lost_worker(error):
                raise
            raise MlkitError(
                f"fine-tuning {self.run}: {self.role} lost the other workers ({str(error).strip().splitlines()[0][:200]}). "
                f"Restart every worker with the same command and TF_CONFIG: training resumes from the chief's last "
                f"finished epoch in {self.chief_work}") from None

    def train_as_worker(self, progress):
        """A non-chief worker: trains in step with the chief, then leaves evaluating and writing to it."""
        try:
            self.train(progress)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
        log.info("%s finished training %s; the chief writes the model, record and log", self.role, self.run)
        return None
