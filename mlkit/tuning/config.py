"""The resolved config of one top-model trial, and the choices it is checked against.

A `TopConfig` travels with the trained top: it is written beside the weights
as `tuning/<run>.json`, so the model can be rebuilt without the command line
that made it (timm's `PretrainedCfg` idea). A caption top's config holds its
whole caption vocabulary (mlkit.text), so the token ids it was trained on
keep their meaning after the cache is rebuilt.
"""

from dataclasses import asdict, dataclass, field, fields

from mlkit.branches import BRANCH_INPUTS, branch_of
from mlkit.errors import MlkitError, check_choice
from mlkit.options import option
from mlkit.runs import TEXT_ONLY_SUFFIX, RunName
from mlkit.taps import encode as encode_taps
from mlkit.vocabulary import OPTIMIZERS, TASKS

LOSSES = {
    "multilabel": ("bce", "focal", "wbce"),
    "multiclass": ("cce", "focal"),
    "regression": ("mse", "mae", "huber"),
}
SCHEDULES = ("constant", "step", "plateau", "cosine")
# How a multi-tap top scales its taps after z-scoring each column (mlkit.tuning.top_data.tap_column_weights):
# "equal" gives every tap the same total variance, "none" leaves every column at unit variance (wide taps dominate).
TAP_WEIGHTS = ("equal", "none")
TOP_POOLS = ("flatten", "avg", "max")
# The caption branch's recurrent layer (the caption report: a bidirectional LSTM of 128 units).
TEXT_KINDS = ("lstm", "bilstm")
DEFAULT_TEXT = "bilstm"
DEFAULT_TEXT_UNITS = 128
DEFAULT_EMBED_DIM = 128
# Every metric a run's log holds, and which way is better: the one home of a metric's direction.
METRIC_DIRECTIONS = {"loss": "min", "val_loss": "min", "val_map": "max", "val_f1": "max", "val_macro_f1": "max",
                     "val_auc": "max", "val_accuracy": "max", "val_mae": "min", "val_rmse": "min"}
# Objectives KerasTuner optimises, with their direction, per task.
OBJECTIVES = {task: {name: METRIC_DIRECTIONS[name] for name in names} for task, names in (
    ("multilabel", ("val_loss", "val_map", "val_f1", "val_auc")),
    ("multiclass", ("val_loss", "val_accuracy", "val_f1")),
    ("regression", ("val_loss", "val_mae", "val_rmse")),
)}


def metric_direction(metric):
    """"min" or "max": which way `metric` (a column of a run's log) gets better."""
    if metric not in METRIC_DIRECTIONS:
        raise MlkitError(f"metric {metric!r}: use one of {', '.join(METRIC_DIRECTIONS)}")
    return METRIC_DIRECTIONS[metric]
# Short codes for the run name's options (mlkit.runs); defaults are omitted there.
SCHEDULE_CODES = {"step": "step", "plateau": "plateau", "cosine": "cos"}
# Settings that change training but are not in the run name: a finished run
# whose record disagrees with the request is reported, not silently reused.
UNNAMED_SETTINGS = ("epochs", "patience", "momentum", "step_every", "step_gamma", "objective", "seed", "vocabulary",
                    "bounds")


@dataclass
class TopConfig:
    """Everything needed to rebuild and retrain one top model.

    `cache` is the path of the cache the top was tuned on and `cache_identity`
    that cache's `FeatureCache.identity`, so stage 3 can refuse another cache
    (records written before it was kept have {} there).

    `taps` names the cached taps the top reads, side by side, as "last" and
    layer names joined by "+" in cache order (mlkit.taps); "last" (or "",
    the default of a config made without a cache) is the backbone's output
    alone. `tap_weights` scales a multi-tap top's standardised taps
    ("equal": each tap the same total variance; "none");
    a single tap is never scaled. Records written before the setting existed
    read as "none", as they were trained.

    `bounds` puts a `FeatureBounds` after the standardisation, holding the
    range the training rows' standardised features had (mlkit.tuning.top);
    records written before it existed read as False, so their weights files,
    which have no bounds, load as they were saved.

    The caption branch is on when `text` names its recurrent layer ("lstm"
    or "bilstm"; "" for image-only tops): `embed_dim`-wide embeddings of the
    cached token ids feed `text_units` LSTM units (per direction), merged with
    the image features, or alone with `text_only`. `vocabulary` is the cache's
    caption vocabulary (mlkit.text), {} without captions.

    Example:
        config = TopConfig(task="multilabel", layers=2, units=1024, reg="d5", lr=0.1, batch=128)
        model = build_top_model(config, input_shape=(2048,), num_outputs=80, task="multilabel")
    """

    task: str = "multilabel"
    layers: int = option(1, "hidden layers")
    units: int = option(1024, "units per hidden layer")
    reg: str = option("d5", "regulariser: dN (dropout N/10, N = 0..9) or bn (batch norm)")
    lr: float = option(0.1, "learning rate")
    batch: int = option(64, "batch size")
    loss: str = option("", "multilabel bce|focal|wbce, multiclass cce|focal, regression mse|mae|huber",
                       shown="the task's first")
    optimizer: str = option("sgd", "sgd (with --momentum) or adam")
    schedule: str = option("constant", "learning-rate schedule: constant|step|plateau|cosine")
    top_pool: str = option("flatten", "raw feature maps only: flatten|avg|max")
    taps: str = option("", "which cached taps the top reads (cache-features --taps): combinations of last, all, "
                           "named depths (early, mid, high, pre) or layer names joined by '+', e.g. "
                           "last,last+high,all", metavar="TAPS",
                       shown="all: every tap the cache holds (last alone for a cache made with --taps last)")
    tap_weights: str = option("equal", "multi-tap tops: equal (every tap the same total variance after standardisation, "
                                       "so a wide tap does not drown a narrow one) or none (every feature unit variance)",
                              choices=TAP_WEIGHTS)
    epochs: int = option(40, "most epochs per trial")
    patience: int = option(5, "early stopping: epochs without improvement of --objective")
    momentum: float = option(0.9, "SGD momentum")
    step_every: int = option(10, "step schedule: epochs between drops")
    step_gamma: float = option(0.1, "step schedule: factor per drop")
    objective: str = option("val_loss", "what picks the best epoch and run: val_loss, val_map|val_f1|val_auc "
                                        "(multilabel), val_accuracy|val_f1 (multiclass), val_mae|val_rmse (regression)")
    seed: int = option(0, "random seed (weights, shuffling, resampling)")
    no_tensorboard: bool = option(False, "write no TensorBoard event files (tuning/<run>/: per-epoch scalars and the "
                                         "run-name fields as hparams, for `tensorboard --logdir tuning`)")
    views: int = 0
    bounds: bool = True
    sample_weights: str = option("", "weight training rows by inverse class frequency", const="balanced")
    cap: int = option(0, "at most N training rows per class, 0 for no cap")
    oversample: int = option(0, "at least N training rows per class, with repeats; 0 for off")
    run: str = ""
    cache: str = ""
    cache_identity: dict = field(default_factory=dict)
    input_shape: list = field(default_factory=list)
    num_outputs: int = 0
    label_names: list = field(default_factory=list)
    target_min: list = field(default_factory=list)
    target_max: list = field(default_factory=list)
    pos_weight: list = field(default_factory=list)
    text: str = option("", "caption branch: lstm|bilstm (with --captions)", shown=DEFAULT_TEXT)
    text_units: int = option(DEFAULT_TEXT_UNITS, "caption branch: LSTM units per direction")
    embed_dim: int = option(DEFAULT_EMBED_DIM, "caption branch: token embedding width")
    text_only: bool = option(False, "train the caption branch alone, without image features (implies --captions)")
    vocabulary: dict = field(default_factory=dict)

    def __post_init__(self):
        """Fills the task's default loss and refuses any setting that cannot be used (MlkitError)."""
        self.loss = self.loss or LOSSES.get(self.task, ("",))[0]
        # tune-top reads "" as every tap its cache holds; a config made without a cache reads the output alone.
        self.taps = self.taps or "last"
        self.validate()

    def validate(self):
        """Checks the settings again (after one was changed in place); returns the config."""
        check_choice(self.task, TASKS, "task")
        check_choice(self.loss, LOSSES[self.task], f"loss for {self.task}")
        check_choice(self.optimizer, OPTIMIZERS, "optimizer")
        check_choice(self.schedule, SCHEDULES, "schedule")
        check_choice(self.top_pool, TOP_POOLS, "top pool")
        check_choice(self.tap_weights, TAP_WEIGHTS, "--tap-weights")
        check_choice(self.objective, tuple(OBJECTIVES[self.task]), f"objective for {self.task}")
        for name in ("layers", "units", "batch", "epochs", "patience"):
            minimum = 0 if name == "layers" else 1
            if int(getattr(self, name)) < minimum:
                raise MlkitError(f"--{name} {getattr(self, name)} must be >= {minimum}")
        if not (self.reg == "bn" or (len(self.reg) == 2 and self.reg[0] == "d" and self.reg[1].isdigit())):
            raise MlkitError(f"--reg {self.reg!r}: use dN (dropout N/10, N = 0..9) or bn")
        if not self.lr > 0:
            raise MlkitError(f"--lr {self.lr}: learning rates must be positive")
        self.check_text()
        return self

    def check_text(self):
        if not self.text:
            if self.text_only:
                raise MlkitError("--text-only trains the caption branch alone; it needs --text lstm or bilstm")
            return
        check_choice(self.text, TEXT_KINDS, "--text")
        for name in ("text_units", "embed_dim"):
            if int(getattr(self, name)) < 1:
                raise MlkitError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 1")
        if not self.vocabulary.get("size") or not self.vocabulary.get("max_len"):
            raise MlkitError("a caption top needs the cache's caption vocabulary; rebuild the cache with "
                             "`mlkit cache-features MANIFEST --captions`")

    @property
    def inputs(self):
        """The top's named inputs: ("features",), ("features", "tokens") or ("tokens",)."""
        return BRANCH_INPUTS[self.branch]

    @property
    def branch(self):
        """"image", "both" or "caption": which branches the top has (the ablation's rows)."""
        return branch_of(self.text, self.text_only)

    @property
    def dropout(self):
        """The dropout rate, 0 for batch norm."""
        return int(self.reg[1:]) / 10 if self.reg.startswith("d") else 0.0

    def run_options(self):
        """The non-default settings written as run-name options (see mlkit.runs)."""
        options = {}
        if self.loss != LOSSES[self.task][0]:
            options["loss"] = self.loss
        if self.optimizer != "sgd":
            options["opt"] = self.optimizer
        if self.schedule != "constant":
            options["sched"] = SCHEDULE_CODES[self.schedule]
        if self.views:
            options["views"] = str(self.views)
        if self.sample_weights:
            options["sw"] = "bal"
        if self.cap:
            options["cap"] = str(self.cap)
        if self.oversample:
            options["over"] = str(self.oversample)
        if self.tap_weights != TAP_WEIGHTS[0] and len(self.tap_list) > 1:
            options["tw"] = self.tap_weights
        if self.text:
            options["text"] = f"{self.text}{int(self.text_units)}{TEXT_ONLY_SUFFIX if self.text_only else ''}"
            if int(self.embed_dim) != DEFAULT_EMBED_DIM:
                options["emb"] = str(int(self.embed_dim))
        return options

    def run_name(self, cache_fields, pool):
        """This trial's `RunName` given the cache's first fields and the top's pool field."""
        dataset, subset, backbone, prep = cache_fields
        options = self.run_options()
        taps = encode_taps(self.tap_list, backbone)
        if taps:
            options["taps"] = taps
        return RunName(
            dataset, subset, backbone, prep, pool, int(self.layers), int(self.units), self.reg,
            float(self.lr), int(self.batch), options=options,
        )

    @property
    def tap_list(self):
        """The taps the top reads, in order: ("last",) or "last" and layer names."""
        return tuple(self.taps.split("+"))

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        """A config from a dict, ignoring keys this version does not know.

        A record without `tap_weights` predates tap weighting: its top was trained with "none";
        one without `bounds` predates feature bounds: its top has none.
        """
        known = {f.name for f in fields(cls)}
        return cls(**{"tap_weights": "none", "bounds": False, **{key: value for key, value in values.items() if key in known}})


