"""Taps: pooled features from several depths of one backbone, and how they are named.

A cache holds the backbone's output (dataset `features`, the tap `last`)
and, with `cache-features --taps`, the pooled output of other layers (one
dataset `taps/<layer>` each). A tap is named by a layer name, or by one of
the named depths the backbone registry declares for its family
(`mlkit.backbones.TAP_NAMES`, shallow to deep: early, mid, high, pre); `all`
is every named depth (cache-features) or every cached tap (tune-top).

A top reads one combination of taps, concatenated in cache order (`last`
first). tune-top writes a combination as `taps-<codes>` in the run name
(mlkit.runs), omitted for `last` alone: one letter per tap, `l` for last and
a named depth's initial (e, m, h, p), or `x` and six hex digits of the
layer name's sha256 for a layer that is not a named depth:

    last+high+pre   ->  taps-lhp
    last+block_5_add   ->  taps-lx3f2a9c

A KerasHub backbone declares no named depths; its taps are named for its
blocks (`block_6`, a transformer's sixth block) or stages (`stage_3`, a
CNN's), or by layer name (mlkit.hub_backbones), and coded as layer names.

A top on several taps also scales each tap's standardised block so every
tap carries the same total variance (TopConfig.tap_weights "equal", the
default; mlkit.tuning.top_data.tap_column_weights); `--tap-weights none`
turns that off and adds `tw-none` to the run name.

This module imports no TensorFlow.
"""

import hashlib

from mlkit.backbones import TAP_NAMES, get_backbone, named_taps
from mlkit.errors import MlkitError

LAST = "last"
ALL = "all"
# cache-features' default: every named depth where the family declares them, features are pooled and the task
# is not regression; else last.
AUTO = "auto"
# The run-name code of `last`, and the prefix of a layer's code (then HASH_DIGITS hex digits).
LAST_CODE = "l"
LAYER_CODE = "x"
HASH_DIGITS = 6
NAMED_CODES = {name: name[0] for name in TAP_NAMES}


def split_names(text):
    """Names from "a+b,c" or a list of them, in order, each once."""
    if isinstance(text, str):
        text = text.replace("+", ",").split(",")
    return list(dict.fromkeys(str(name).strip() for name in text if str(name).strip()))


def cache_taps(backbone, taps=LAST, pooling="avg", task=None):
    """The layers `cache-features --taps` stores beside the backbone's output, in order.

    Args:
        backbone: the registry name, e.g. "mobilenetv2".
        taps: "last" (nothing more), "all" (every named depth of the family),
            "auto" ("all" where the family declares named depths, `pooling`
            is not "none" and the task is not regression, else "last"), or
            names joined by "," or "+": named depths and layer names.
            Defaults to "last".
        pooling: the cache's pooling, which "auto" reads. Defaults to "avg".
        task: the manifest's task, which "auto" reads: taps were measured on
            multilabel collections; on a small synthetic regression set (41
            training images, targets 1 to 6) the cached top on every tap had
            a test MAE of 6.3 against 2.5 on the last layer alone (6.3 against
            1.6 at 40 epochs), with the tops' feature bounds (BENCHMARKS.md,
            "Feature bounds"). Defaults to None (not regression).

    Returns:
        A tuple of layer names, without "last" (its dataset is `features`).

    Raises:
        MlkitError: for "all" or a named depth on a family that declares none,
            or for no names at all.
    """
    named = named_taps(get_backbone(backbone).name)
    if taps == AUTO:
        wanted = named and pooling != "none" and task != "regression"
        return tuple(dict.fromkeys(named.values())) if wanted else ()
    names = split_names(taps)
    if not names:
        raise MlkitError(f"--taps {taps!r}: give last, all, or names such as last,mid,high")
    layers = []
    for name in names:
        if name == LAST:
            continue
        if name == ALL or name in TAP_NAMES:
            if not named:
                raise MlkitError(f"--taps {name}: {backbone} declares no named depths ({', '.join(TAP_NAMES)}); "
                                 f"give its layer names instead{_hub_hint(backbone)}")
            layers += list(named.values()) if name == ALL else [named.get(name) or _missing(backbone, name, named)]
        else:
            layers.append(name)
    return tuple(dict.fromkeys(layers))


def _hub_hint(backbone):
    if get_backbone(backbone).kind != "hub":
        return ""
    return (" (a KerasHub transformer's blocks are block_1, block_2, ...; a CNN's stages stage_1, stage_2, ...; "
            "see mlkit.hub_backbones)")


def _missing(backbone, name, named):
    raise MlkitError(f"--taps {name}: {backbone} declares only {', '.join(named)}; give a layer name instead")


def combinations(text):
    """tune-top's `--taps` axis: "last,last+mid,all" -> [("last",), ("last", "mid"), ("all",)]."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    combos = []
    for part in parts:
        names = split_names(part.split("+") if isinstance(part, str) else part)
        if names:
            combos.append(tuple(names))
    if not combos:
        raise MlkitError(f"--taps {text!r}: give combinations such as last,last+high,all")
    return list(dict.fromkeys(combos))


def resolve(combination, backbone, cached):
    """One combination's taps as a top reads them: "last" and layer names, in cache order.

    Args:
        combination: names as given (named depths, layer names, "last", "all").
        backbone: the cache's backbone (registry name).
        cached: the layers the cache holds beside "last", in its order.

    Raises:
        MlkitError: naming a tap the cache does not hold, and how to add it.
    """
    named = named_taps(backbone)
    order = (LAST, *cached)
    wanted = set()
    for name in split_names(combination):
        if name == ALL:
            wanted.update(order)
            continue
        layer = named.get(name, name)
        if layer not in order:
            holds = ", ".join(_label(tap, named) for tap in order)
            raise MlkitError(f"--taps {'+'.join(combination)}: the cache holds no tap {name!r} (it holds {holds}); "
                             f"cache it with `mlkit cache-features MANIFEST --taps ... --overwrite`")
        wanted.add(layer)
    return tuple(tap for tap in order if tap in wanted)


def _label(layer, named):
    alias = {value: key for key, value in named.items()}.get(layer)
    return f"{alias} ({layer})" if alias else layer


def encode(taps, backbone):
    """A combination's run-name option value ("lhp"), or None for "last" alone (the option is omitted)."""
    taps = tuple(taps)
    if taps in ((), (LAST,)):
        return None
    alias = {layer: name for name, layer in named_taps(backbone).items()}
    return "".join(LAST_CODE if tap == LAST else NAMED_CODES[alias[tap]] if tap in alias else layer_code(tap)
                   for tap in taps)


def layer_code(layer):
    return LAYER_CODE + hashlib.sha256(layer.encode()).hexdigest()[:HASH_DIGITS]


def decode(value, backbone, cached=()):
    """The taps a run-name option value names (the inverse of `encode`); None or "" is ("last",).

    Args:
        value: the `taps-` option's value.
        backbone: the run's backbone.
        cached: layer names a `x......` code may stand for (the cache's taps).
    """
    if not value:
        return (LAST,)
    by_code = {LAST_CODE: LAST, **{code: named_taps(backbone).get(name) for name, code in NAMED_CODES.items()}}
    by_code.update({layer_code(layer): layer for layer in cached})
    taps, position = [], 0
    while position < len(value):
        width = 1 + HASH_DIGITS if value[position] == LAYER_CODE else 1
        code = value[position:position + width]
        if not by_code.get(code):
            raise MlkitError(f"taps-{value}: {code!r} names no tap of {backbone} (named depths "
                             f"{', '.join(NAMED_CODES.values())}, l for last, x+6 hex digits for a cached layer)")
        taps.append(by_code[code])
        position += width
    return tuple(taps)
