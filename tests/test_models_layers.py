"""Stage-3 building blocks: the decision layer, unscaling, augmentation codes, freezing, run names."""

import keras
import numpy as np
import pytest

from mlkit.errors import MlkitError
from mlkit.evaluation.decisions import parse_rule
from mlkit.layers import FeatureBounds, LabelDecision, Unscale
from mlkit.models.augment import augmentation_layers, parse_augment
from mlkit.models.finetune import FinetuneConfig, finetune_run_name
from mlkit.models.network import apply_freeze, resolve_freeze
from mlkit.runs import parse_run_name


def plain_decisions(scores, threshold=None, k=None, min_labels=0, max_labels=None):
    """An independent, row-by-row implementation of the rules, for cross-checking."""
    decided = np.zeros(scores.shape, np.uint8)
    for row, values in enumerate(scores):
        order = sorted(range(len(values)), key=lambda i: -values[i])
        chosen = set(order[:k]) if k is not None else {i for i in range(len(values)) if values[i] >= np.float32(
            threshold if np.ndim(threshold) == 0 else threshold[i])}
        chosen |= set(order[:min_labels])
        if max_labels is not None and len(chosen) > max_labels:
            chosen = set([i for i in order if i in chosen][:max_labels])
        decided[row, sorted(chosen)] = 1
    return decided


@pytest.fixture
def scores():
    # Distinct values: ties would make "the top K" ambiguous for any implementation.
    return np.random.default_rng(0).permutation(40 * 7).reshape(40, 7).astype("float32") / 280


@pytest.mark.parametrize("spec, options", [
    ("threshold:0.5", {}), ("topk:3", {}), ("threshold:0.9", {"min_labels": 1}),
    ("threshold:0.2", {"max_labels": 2}), ("topk:2", {"min_labels": 3}),
])
def test_label_decision_layer_applies_rules_like_rule_apply_and_a_plain_loop(scores, spec, options):
    rule = parse_rule(spec, **options)
    layer = LabelDecision(rule.to_dict())
    decided = np.asarray(layer(scores))
    assert decided.dtype == np.uint8
    np.testing.assert_array_equal(decided, rule.apply(scores))
    threshold = rule.threshold if rule.kind == "threshold" else None
    np.testing.assert_array_equal(decided, plain_decisions(scores, threshold, rule.param if rule.kind == "topk" else None,
                                                           **options))


def test_fitted_cardinality_and_per_class_rules_decide_the_same_in_the_layer(scores):
    labels = (np.random.default_rng(1).random(scores.shape) < 0.3).astype("uint8")
    for spec in ("cardinality", "fbeta:1", "per-class:1"):
        rule = parse_rule(spec, min_positives=1).fit(scores, labels, train_cardinality=2.0)
        np.testing.assert_array_equal(np.asarray(LabelDecision(rule.to_dict())(scores)), rule.apply(scores))


def test_argmax_is_one_hot_and_unfitted_or_rank_rules_are_refused(scores):
    decided = np.asarray(LabelDecision(parse_rule("argmax").to_dict())(scores))
    np.testing.assert_array_equal(decided.argmax(1), scores.argmax(1))
    assert decided.sum(1).tolist() == [1] * len(scores)
    with pytest.raises(MlkitError, match="not fitted"):
        LabelDecision(parse_rule("cardinality").to_dict())
    with pytest.raises(MlkitError, match="cannot be built"):
        LabelDecision(parse_rule("rank").to_dict())


def test_decision_and_unscale_survive_a_keras_round_trip(tmp_path, scores):
    rule = parse_rule("threshold:0.4", max_labels=2)
    inputs = keras.Input((7,))
    model = keras.Model(inputs, {"labels": LabelDecision(rule.to_dict())(inputs),
                                 "years": Unscale([1900.0] * 7, [2000.0] * 7)(inputs)})
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    out = loaded.predict_on_batch(scores)
    np.testing.assert_array_equal(out["labels"], rule.apply(scores))
    np.testing.assert_allclose(out["years"], 1900 + 100 * scores, rtol=1e-6)


def test_feature_bounds_clip_each_feature_to_its_stored_range_and_survive_a_keras_round_trip(tmp_path):
    from mlkit.models.export import load_model

    inputs = keras.Input((3,))
    bounds = FeatureBounds(name="bounds")
    model = keras.Model(inputs, bounds(inputs))
    x = np.array([[-5.0, 0.5, 9.0], [0.0, -0.2, 1.0]], dtype="float32")
    np.testing.assert_array_equal(model.predict_on_batch(x), x)  # unbounded until the range is set
    bounds.low.assign([-1.0, 0.0, -np.inf])
    bounds.high.assign([1.0, 0.25, 2.0])
    expected = np.array([[-1.0, 0.25, 2.0], [0.0, 0.0, 1.0]], dtype="float32")
    np.testing.assert_array_equal(model.predict_on_batch(x), expected)
    model.save(tmp_path / "bounded.keras")
    loaded, _ = load_model(tmp_path / "bounded.keras")
    assert isinstance(loaded.get_layer("bounds"), FeatureBounds)
    np.testing.assert_array_equal(loaded.predict_on_batch(x), expected)


@pytest.mark.parametrize("codes, canonical", [("fzh", "hzf"), ("", "none"), ("NONE", "none"), ("hwrszf", "hwrszf"),
                                              ("gcbvf", "fvbcg")])
def test_augmentation_codes_are_canonical(codes, canonical):
    assert parse_augment(codes) == canonical


@pytest.mark.parametrize("codes, message", [("hx", "unknown code"), ("hh", "repeated")])
def test_bad_augmentation_codes_name_the_problem(codes, message):
    with pytest.raises(MlkitError, match=message):
        parse_augment(codes)


def test_augmentation_layers_keep_shape_and_pixel_range_and_change_images():
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    layers = augmentation_layers("hwrszfvbcg", seed=1)
    assert [layer.name for layer in layers] == ["aug_shift", "aug_rotate", "aug_shear", "aug_zoom", "aug_flip",
                                                "aug_brightness", "aug_contrast", "aug_grayscale"]
    out = images
    for layer in layers:
        out = layer(out, training=True)
    out = np.asarray(out)
    assert out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 255.001
    assert not np.allclose(out, images)
    assert augmentation_layers("none") == []


def vgg_like():
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for block in (1, 2, 3):
        x = keras.layers.Conv2D(4, 3, padding="same", name=f"block{block}_conv1")(x)
        x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="tiny")


def test_freeze_resolves_all_numbers_and_block_names():
    backbone = vgg_like()
    assert resolve_freeze(backbone, "all") == "all"
    assert resolve_freeze(backbone, "3") == 3
    assert resolve_freeze(backbone, "block3") == 5
    assert resolve_freeze(backbone, str(len(backbone.layers))) == "all"
    assert resolve_freeze(backbone, "75%") == 5 and resolve_freeze(backbone, "0%") == 0
    assert resolve_freeze(backbone, "100%") == "all"
    with pytest.raises(MlkitError, match="percentage"):
        resolve_freeze(backbone, "120%")
    with pytest.raises(MlkitError, match="block prefix"):
        resolve_freeze(backbone, "conv9")
    with pytest.raises(MlkitError, match="only 7 layers"):
        resolve_freeze(backbone, "99")
    apply_freeze(backbone, backbone, 5)
    assert [layer.trainable for layer in backbone.layers] == [False] * 5 + [True] * 2
    apply_freeze(backbone, backbone, "all")
    assert not backbone.trainable_weights


def test_finetune_run_names_extend_the_top_run_and_parse_back():
    config = FinetuneConfig(lr=0.001, batch=32, augment="fh", warmup_epochs=2, optimizer="sgd").validate()
    name = finetune_run_name("coco_2017_vgg16_inet_avg_2x4096d5_lr11_b256_loss-focal", 15, config)
    assert name == "coco_2017_vgg16_inet_avg_2x4096d5_lr11_b256_15_lr13_b32_hf_ftopt-sgd_loss-focal_wu-2"
    run = parse_run_name(name)
    assert (run.frozen, run.ft_lr, run.ft_batch, run.aug) == (15, 0.001, 32, "hf")
    assert run.option("wu") == "2" and run.option("loss") == "focal"


@pytest.mark.parametrize("settings, message", [({"batch": 0}, "--batch"), ({"lr": -1}, "--lr"),
                                               ({"strategy": "tpu"}, "--strategy"), ({"augment": "q"}, "unknown code")])
def test_bad_finetune_settings_fail_before_any_work(settings, message):
    with pytest.raises(MlkitError, match=message):
        FinetuneConfig(**settings).validate()
