"""Run names: every trial is named by the hyperparameters that made it.

A run's log, weights and config share one name, so runs can be compared from
their file names alone (the COCO report, section 4.3; docs/references.md). Fields are joined by `_`:

    <dataset>_<subset>_<backbone>_<prep>_<pool>_<L>x<U><reg>_lr<XY>_b<B>
        [_<frozen>_lr<XY>_b<B>_<aug>] [_<key>-<value> ...]

The first eight fields describe the top model trained on the cache: the
cache's own first five fields (its file is `<dataset>_<subset>_<backbone>_
<prep>_<pool>.h5`, except that a raw-map cache's `none` becomes the top's
`<H><W>` flatten, `avg` or `max`), then `L` hidden layers of `U` units with
`dN` dropout (rate N/10) or `bn` batch norm, the learning rate, and the batch
size. The optional fine-tuning suffix (stage 3) adds the number of frozen
backbone layers (or `all`), its own learning rate and batch size, and the
augmentation codes (h w r s z f, more may be added; `none` for none).

Learning rates: `lrXY` means X * 10^-Y where the LAST digit is the exponent Y
and all digits before it the mantissa X: lr11 = 0.1, lr52 = 0.05, lr13 =
0.001, lr255 = 25e-5 = 2.5e-4, lr10 = 1. The encoding is canonical: the
smallest exponent that makes the mantissa an integer, so a mantissa never ends
in 0 unless the exponent is 0 (lr100 = 10). Rates that need an exponent above
9 (say 1.5e-10) cannot be written; round them.

Options: settings that are not in the fixed fields but change what a run
trains follow as `_<key>-<value>` tokens, keys sorted alphabetically, each at
most once, omitted when at their default, so the fixed positions never move
and names stay short. Keys are lower-case letters, values lower-case letters
and digits. Stage 2 writes `loss-` (focal, wbce, mae, huber; default bce /
cce / mse), `opt-` (adam; default sgd with momentum), `sched-` (step, plateau,
cos; default constant), `views-K` (trained on K cached augmented views per
image), `sw-bal` (balanced sample weights), `cap-N` (at most N training rows
per class) and `over-N` (small classes oversampled to N rows). New keys
need no change here: unknown keys are parsed and written back verbatim.

The caption branch (the caption report) adds `text-<kind><units>[only]`: its recurrent
layer (`lstm`, or `bilstm` for a bidirectional one) and units per direction,
then `only` when the top reads the captions alone, without the image
features (the fixed fields still name the cache it was trained on); and
`emb-N` for an embedding width other than the default 128. A name without
`text-` is an image-only run. `RunName.branch` (and the `branch` field)
reads this as "image", "both" or "caption", the three rows of the captions
ablation.

    coco_2017_vgg16_zmuvs_avg_2x4096d5_lr11_b256
    coco_2017_vgg16_zmuvs_avg_2x4096d5_lr11_b256_15_lr11_b128_hwrszf
    met_culture_resnet50_inet_avg_1x1024bn_lr255_b64_loss-focal_opt-adam
    synth_all_mobilenetv2_inet_avg_1x64d2_lr13_b32_opt-adam_text-bilstm128
    synth_all_mobilenetv2_inet_avg_1x64d2_lr13_b32_emb-64_opt-adam_text-lstm32only
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation

from mlkit.branches import branch_of
from mlkit.errors import MlkitError
from mlkit.workspace import strip_suffix

TOP_FIELDS = 8
FINETUNE_FIELDS = 4
MAX_LR_EXPONENT = 9

NAME_FIELD = re.compile(r"[A-Za-z0-9-]+")
ARCH = re.compile(r"(\d+)x(\d+)(bn|d\d)")
LR = re.compile(r"lr(\d{2,})")
BATCH = re.compile(r"b(\d+)")
FROZEN = re.compile(r"\d+|all")
AUG = re.compile(r"[a-z]+")
OPTION_KEY = re.compile(r"[a-z]+")
OPTION_VALUE = re.compile(r"[a-z0-9]+")
REG = re.compile(r"bn|d\d")
TEXT_ONLY_SUFFIX = "only"


class RunNameError(MlkitError, ValueError):
    """A run name, or a field for one, that does not follow the grammar."""


def encode_lr(lr):
    """Writes a learning rate as the digits after `lr` (0.05 -> "52").

    Args:
        lr: a positive number whose decimal form has at most 9 decimals.

    Returns:
        The mantissa digits followed by one exponent digit.

    Raises:
        RunNameError: when the rate is not positive or needs more than 9 decimals.
    """
    try:
        value = Decimal(repr(float(lr))).normalize()
    except (TypeError, ValueError, InvalidOperation) as error:
        raise RunNameError(f"learning rate {lr!r} is not a number") from error
    if not value.is_finite() or value <= 0:
        raise RunNameError(f"learning rate {lr!r} must be a positive number")
    _, digits, exponent = value.as_tuple()
    mantissa = int("".join(map(str, digits))) * 10 ** max(0, exponent)
    decimals = max(0, -exponent)
    if decimals > MAX_LR_EXPONENT:
        raise RunNameError(
            f"learning rate {lr!r} needs {decimals} decimals; run names hold at most "
            f"{MAX_LR_EXPONENT} (lrXY = X * 10^-Y, one exponent digit): round it, e.g. to {float(value):.2g}"
        )
    return f"{mantissa}{decimals}"


def decode_lr(digits):
    """Reads the digits after `lr` back into a float ("52" -> 0.05).

    Raises:
        RunNameError: when the digits are not the canonical encoding of a rate.
    """
    if not re.fullmatch(r"\d{2,}", digits or ""):
        raise RunNameError(f"lr{digits}: expected a mantissa and one exponent digit, e.g. lr11 (0.1) or lr52 (0.05)")
    mantissa, exponent = digits[:-1], int(digits[-1])
    if mantissa.startswith("0") or (exponent > 0 and mantissa.endswith("0")):
        rate = float(Decimal(int(mantissa)).scaleb(-exponent))
        canonical = f"lr{encode_lr(rate)}" if int(mantissa) else "a positive rate"
        raise RunNameError(f"lr{digits} is not canonical; write {canonical}")
    return float(Decimal(int(mantissa)).scaleb(-exponent))


@dataclass(frozen=True)
class RunName:
    """The fields of a run name; `str(run)` formats it, `parse_run_name` reads one.

    Example:
        run = RunName("coco", "2017", "vgg16", "zmuvs", "avg", 2, 4096, "d5", 0.1, 256)
        str(run)  # 'coco_2017_vgg16_zmuvs_avg_2x4096d5_lr11_b256'
    """

    dataset: str
    subset: str
    backbone: str
    prep: str
    pool: str
    layers: int
    units: int
    reg: str
    lr: float
    batch: int
    frozen: int | str | None = None
    ft_lr: float | None = None
    ft_batch: int | None = None
    aug: str | None = None
    options: tuple = field(default=())

    def __post_init__(self):
        for name in ("dataset", "subset", "backbone", "prep", "pool"):
            value = getattr(self, name)
            if not isinstance(value, str) or not NAME_FIELD.fullmatch(value):
                raise RunNameError(
                    f"{name} {value!r} cannot go in a run name: use letters, digits and '-' only (no '_')"
                )
        check_int("layers", self.layers, minimum=0)
        check_int("units", self.units, minimum=1)
        check_int("batch", self.batch, minimum=1)
        if not isinstance(self.reg, str) or not REG.fullmatch(self.reg):
            raise RunNameError(f"reg {self.reg!r}: expected dN (dropout N/10, N = 0..9) or bn")
        encode_lr(self.lr)
        self.check_finetune()
        object.__setattr__(self, "options", normalize_options(self.options))

    def check_finetune(self):
        parts = (self.frozen, self.ft_lr, self.ft_batch, self.aug)
        if all(part is None for part in parts):
            return
        if any(part is None for part in parts):
            raise RunNameError("the fine-tuning fields frozen, ft_lr, ft_batch and aug go together: give all four or none")
        if not FROZEN.fullmatch(str(self.frozen)) or isinstance(self.frozen, bool):
            raise RunNameError(f"frozen {self.frozen!r}: expected a number of layers or 'all'")
        object.__setattr__(self, "frozen", self.frozen if self.frozen == "all" else int(self.frozen))
        encode_lr(self.ft_lr)
        check_int("ft_batch", self.ft_batch, minimum=1)
        if not isinstance(self.aug, str) or not AUG.fullmatch(self.aug):
            raise RunNameError(f"aug {self.aug!r}: expected augmentation codes such as 'hwrszf', or 'none'")

    @property
    def arch(self):
        """The top's layers, units and regulariser as one field, e.g. '2x4096d5'."""
        return f"{self.layers}x{self.units}{self.reg}"

    def option(self, key, default=None):
        """One option's value, or `default` when the name omits it."""
        return dict(self.options).get(key, default)

    @property
    def branch(self):
        """"image" (no `text-` option), "caption" (`text-...only`) or "both"."""
        text = self.option("text")
        return branch_of(text, bool(text) and text.endswith(TEXT_ONLY_SUFFIX))

    def fields(self):
        """All fields as a flat dict (options by key, and `branch`), for tables and filters."""
        values = asdict(self)
        values.pop("options")
        values["arch"] = self.arch
        values["branch"] = self.branch
        values.update(dict(self.options))
        return values

    def __str__(self):
        return format_run_name(self)


def check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RunNameError(f"{name} {value!r}: expected an integer >= {minimum}")


def normalize_options(options):
    """Options as a tuple of (key, value) string pairs sorted by key."""
    pairs = list(options.items()) if isinstance(options, dict) else list(options)
    seen = set()
    normalized = []
    for key, value in pairs:
        key, value = str(key), str(value)
        if not OPTION_KEY.fullmatch(key) or not OPTION_VALUE.fullmatch(value):
            raise RunNameError(
                f"option {key}-{value}: keys are lower-case letters, values lower-case letters and digits"
            )
        if key in seen:
            raise RunNameError(f"option {key!r} given twice")
        seen.add(key)
        normalized.append((key, value))
    return tuple(sorted(normalized))


def format_run_name(run: RunName) -> str:
    """Writes a `RunName` as its canonical string (the inverse of `parse_run_name`)."""
    parts = [
        run.dataset, run.subset, run.backbone, run.prep, run.pool,
        run.arch, f"lr{encode_lr(run.lr)}", f"b{run.batch}",
    ]
    if run.frozen is not None:
        parts += [str(run.frozen), f"lr{encode_lr(run.ft_lr)}", f"b{run.ft_batch}", run.aug]
    parts += [f"{key}-{value}" for key, value in run.options]
    return "_".join(parts)


def parse_run_name(name: str) -> RunName:
    """Reads a run name (or a file name such as `<run>.csv`) back into its fields.

    Args:
        name: the run name; a trailing `.csv`, `.json` or `.weights.h5` is ignored.

    Returns:
        A `RunName`.

    Raises:
        RunNameError: naming the field that does not follow the grammar.
    """
    name = strip_suffix(str(name))
    tokens = name.split("_")
    if len(tokens) < TOP_FIELDS:
        raise RunNameError(f"run name {name!r} has {len(tokens)} fields; expected at least {TOP_FIELDS}: {GRAMMAR}")
    dataset, subset, backbone, prep, pool, arch, lr, batch = tokens[:TOP_FIELDS]
    layers, units, reg = match_field(ARCH, arch, "layers x units + reg (e.g. 2x4096d5)", name).groups()
    finetune = {}
    rest = tokens[TOP_FIELDS:]
    if rest and "-" not in rest[0]:
        if len(rest) < FINETUNE_FIELDS or any("-" in token for token in rest[:FINETUNE_FIELDS]):
            raise RunNameError(f"run name {name!r}: the fine-tuning suffix needs <frozen>_lr<XY>_b<B>_<aug>")
        frozen, ft_lr, ft_batch, aug = rest[:FINETUNE_FIELDS]
        finetune = {
            "frozen": match_field(FROZEN, frozen, "frozen layers or 'all'", name).group(0),
            "ft_lr": decode_lr(match_field(LR, ft_lr, "lr<XY>", name).group(1)),
            "ft_batch": int(match_field(BATCH, ft_batch, "b<batch>", name).group(1)),
            "aug": aug,
        }
        rest = rest[FINETUNE_FIELDS:]
    run = RunName(
        dataset, subset, backbone, prep, pool, int(layers), int(units), reg,
        decode_lr(match_field(LR, lr, "lr<XY>", name).group(1)),
        int(match_field(BATCH, batch, "b<batch>", name).group(1)),
        options=parse_options(rest, name), **finetune,
    )
    if format_run_name(run) != name:
        raise RunNameError(f"run name {name!r} is not canonical; it reads as {format_run_name(run)!r}")
    return run


GRAMMAR = "<dataset>_<subset>_<backbone>_<prep>_<pool>_<L>x<U><reg>_lr<XY>_b<B>[_<frozen>_lr<XY>_b<B>_<aug>][_<key>-<value>...]"
def match_field(pattern, token, expected, name):
    match = pattern.fullmatch(token)
    if not match:
        raise RunNameError(f"run name {name!r}: field {token!r} is not {expected}")
    return match


def parse_options(tokens, name):
    pairs = []
    for token in tokens:
        key, dash, value = token.partition("-")
        if not dash:
            raise RunNameError(f"run name {name!r}: trailing field {token!r} is not an option <key>-<value>")
        pairs.append((key, value))
    if [key for key, _ in pairs] != sorted(key for key, _ in pairs):
        raise RunNameError(f"run name {name!r}: options must be sorted by key")
    return pairs
