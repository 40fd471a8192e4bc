"""`mlkit lr-find`: the learning-rate range test on cached features.

One batch per step, the learning rate rising exponentially from `start_lr` to
`end_lr` (Smith 2017; the iMet report used it to pick StepLR's starting rate; fastai's
`lr_find`). The loss is smoothed with a bias-corrected exponential moving
average, and the test stops once the smoothed loss exceeds `diverge` times
its minimum. Two rates are suggested: the steepest descent of the smoothed
loss (against log lr) before its minimum, which is the one returned as
`suggestion`, and the rate at the minimum divided by 10, the usual
conservative alternative.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlkit.bottlenecks.cache import open_cache
from mlkit.errors import MlkitError
from mlkit.files import StrPath
from mlkit.options import defaults_of
from mlkit.taps import ALL as ALL_TAPS
from mlkit.taps import combinations as tap_combinations
from mlkit.taps import encode as encode_taps
from mlkit.taps import resolve as resolve_taps
from mlkit.tuning.config import TopConfig
from mlkit.tuning.memory import parse_memory
from mlkit.tuning.top_data import MAX_MEMORY, TopData

logger = logging.getLogger(__name__)
TOP = defaults_of(TopConfig)

# Points before the minimum needed for a meaningful slope; fewer and the
# suggestion falls back to min/10.
MIN_SLOPE_POINTS = 5
SKIP_START_FRACTION = 10


@dataclass
class LRFindResult:
    """The range test's curve and its suggested rates.

    Attributes:
        lrs, losses, smoothed: the rate, raw batch loss and smoothed loss at each step.
        steepest: the rate of steepest descent before the minimum (None if too few points).
        min_over_10: the rate at the smoothed minimum, divided by 10.
        suggestion: the suggested rate; `method` says which of the two it is.
        stopped: "diverged" or "end" (reached end_lr).
        csv, plot: the files written.
    """

    lrs: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    smoothed: list = field(default_factory=list)
    steepest: float | None = None
    min_over_10: float | None = None
    suggestion: float | None = None
    method: str = ""
    stopped: str = "end"
    csv: str = ""
    plot: str = ""


def range_test(model, batches, lrs, smoothing=0.98, diverge=4.0):
    """Trains one batch per rate; returns (raw losses, smoothed losses, stopped)."""
    raw, smoothed = [], []
    average, best = 0.0, np.inf
    for step, (lr, batch) in enumerate(zip(lrs, batches)):
        model.optimizer.learning_rate.assign(float(lr))
        loss = float(model.train_on_batch(*batch, return_dict=True)["loss"])
        average = smoothing * average + (1 - smoothing) * loss
        value = average / (1 - smoothing ** (step + 1))
        raw.append(loss)
        smoothed.append(value)
        if not np.isfinite(value) or (step > 0 and value > diverge * best):
            return raw, smoothed, "diverged"
        best = min(best, value)
    return raw, smoothed, "end"


def suggest(lrs, smoothed):
    """(steepest, min_over_10): steepest descent before the minimum, and min / 10."""
    lrs, smoothed = np.asarray(lrs, dtype="float64"), np.asarray(smoothed, dtype="float64")
    finite = np.isfinite(smoothed)
    lowest = int(np.argmin(np.where(finite, smoothed, np.inf)))
    min_over_10 = float(lrs[lowest] / 10)
    # The first points' average rests on a few batches and wobbles; skipping
    # them, as fastai does, keeps the slope from chasing that noise.
    skip = max(1, len(lrs) // SKIP_START_FRACTION)
    if lowest + 1 - skip < MIN_SLOPE_POINTS:
        return None, min_over_10
    slope = np.gradient(smoothed[skip: lowest + 1], np.log10(lrs[skip: lowest + 1]))
    return float(lrs[skip + int(np.argmin(slope))]), min_over_10


def lr_find(
    cache_path: StrPath, workdir: StrPath = ".", *, layers: int = TOP["layers"], units: int = TOP["units"],
    reg: str = TOP["reg"], batch: int = TOP["batch"], loss: str = TOP["loss"], optimizer: str = TOP["optimizer"],
    momentum: float = TOP["momentum"], top_pool: str = TOP["top_pool"], start_lr: float = 1e-6, end_lr: float = 10.0,
    steps: int = 100, smoothing: float = 0.98, diverge: float = 4.0, augmented: bool = False,
    max_memory: int | str = MAX_MEMORY, seed: int = TOP["seed"], verbose: bool = True, taps: str = TOP["taps"],
    tap_weights: str = TOP["tap_weights"],
) -> LRFindResult:
    """Runs the LR range test for one top model on a cache, plots it, suggests a rate.

    Args:
        cache_path: the `.h5` bottleneck cache.
        workdir: the workspace; files go to `tuning/lr-find/`. Defaults to ".".
        layers, units, reg, batch, loss, optimizer, momentum, top_pool: the top
            model, as in `tune_top` (one value each).
        taps: the cached taps the top reads, one combination ("last+high",
            "all"; mlkit.taps). Defaults to every tap the cache holds.
        tap_weights: "equal" or "none": how a multi-tap top scales its
            standardised taps (see `tune_top`). Defaults to "equal".
        start_lr, end_lr: the range, swept exponentially. Default to 1e-6 and 10.
        steps: batches (one rate each). Defaults to 100.
        smoothing: the moving-average factor. Defaults to 0.98.
        diverge: stop when the smoothed loss exceeds this multiple of its minimum. Defaults to 4.
        augmented, max_memory, seed: as in `tune_top`.
        verbose: print the suggestion. Defaults to True.

    Returns:
        An `LRFindResult`.

    Example:
        result = lr_find("bottlenecks/coco_2017_vgg16_zmuvs_avg.h5", units=2048)
        print(result.suggestion, result.method)
    """
    import keras

    from mlkit.tuning.top import build_top_model, compile_top, set_input_statistics

    if not 0 < start_lr < end_lr:
        raise MlkitError(f"--start-lr {start_lr} and --end-lr {end_lr}: need 0 < start < end")
    if int(steps) < 2 * MIN_SLOPE_POINTS:
        raise MlkitError(f"--steps {steps}: use at least {2 * MIN_SLOPE_POINTS}")
    cache = open_cache(cache_path)
    combos = tap_combinations(taps or ALL_TAPS)
    if len(combos) != 1:
        raise MlkitError(f"--taps {taps}: lr-find tests one combination of taps (join names with '+')")
    taps = "+".join(resolve_taps(combos[0], cache.name_fields[2], cache.taps))
    config = TopConfig(task=cache.task, layers=int(layers), units=int(units), reg=reg, lr=start_lr, batch=int(batch),
                       loss=loss or "", optimizer=optimizer, momentum=momentum, top_pool=top_pool, seed=seed, taps=taps, tap_weights=tap_weights)
    data = TopData(cache, views=cache.augment_copies if augmented else 0, max_memory=parse_memory(max_memory), seed=seed,
                   taps=taps)
    keras.utils.set_random_seed(seed)
    model = compile_top(build_top_model(config, data.feature_shape, cache.num_outputs, cache.task), config,
                        data.pos_weight)
    set_input_statistics(model, *data.input_statistics(config.tap_weights), *data.input_range())
    lrs = np.geomspace(start_lr, end_lr, int(steps))
    raw, smoothed, stopped = range_test(model, iter(data.train_dataset(config.batch).repeat()), lrs, smoothing, diverge)
    lrs = lrs[: len(smoothed)]
    steepest, min_over_10 = suggest(lrs, smoothed)
    result = LRFindResult(
        lrs=lrs.tolist(), losses=raw, smoothed=smoothed, steepest=steepest, min_over_10=min_over_10,
        suggestion=steepest if steepest is not None else min_over_10,
        method="steepest descent" if steepest is not None else "minimum / 10", stopped=stopped,
    )
    code = encode_taps(config.tap_list, cache.name_fields[2])
    weights = config.run_options().get("tw")
    stem = Path(workdir) / "tuning" / "lr-find" / (f"{'_'.join(cache.name_fields)}_{config.layers}x{config.units}{config.reg}"
                                                   f"_b{config.batch}{f'_taps-{code}' if code else ''}"
                                                   f"{f'_tw-{weights}' if weights else ''}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    result.csv, result.plot = str(stem) + ".csv", str(stem) + ".png"
    pd.DataFrame({"lr": result.lrs, "loss": raw, "smoothed": smoothed}).to_csv(result.csv, index=False)
    plot_range_test(result, result.plot)
    if verbose:
        print(describe(result), flush=True)
    return result


def describe(result):
    steep = "n/a (too few points before the minimum)" if result.steepest is None else f"{result.steepest:.3g}"
    return (f"lr-find: {len(result.lrs)} steps, {result.stopped}; steepest descent {steep}, minimum/10 "
            f"{result.min_over_10:.3g}; suggested {result.suggestion:.3g} ({result.method})\n"
            f"curve: {result.csv}\nplot: {result.plot}")


def plot_range_test(result, out):
    """Smoothed (and raw) loss against the learning rate, log scale, both suggestions marked."""
    from mlkit.evaluation.plots import new_figure

    figure, axes = new_figure((7, 4.5))
    axes.plot(result.lrs, result.losses, color="0.75", lw=0.8, label="batch loss")
    axes.plot(result.lrs, result.smoothed, color="C0", lw=1.8, label="smoothed loss")
    if result.steepest is not None:
        axes.axvline(result.steepest, color="C1", ls="--", label=f"steepest descent {result.steepest:.2g}")
    axes.axvline(result.min_over_10, color="C2", ls=":", label=f"minimum / 10 {result.min_over_10:.2g}")
    finite = [v for v in result.smoothed if np.isfinite(v)]
    if finite:
        axes.set_ylim(min(finite) * 0.9, min(max(finite), 4 * min(finite)) * 1.1)
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.set_title(f"LR range test (suggested {result.suggestion:.2g}: {result.method})")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
