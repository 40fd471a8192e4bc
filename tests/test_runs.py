"""Run names: the grammar of docs/design.md, exact round trips, clear errors."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlkit.errors import MlkitError
from mlkit.runs import RunName, RunNameError, decode_lr, encode_lr, format_run_name, parse_run_name

SEED_003 = "coco_2017_vgg16_zmuvs_avg_2x4096d5_lr11_b256_15_lr11_b128_hwrszf"


@pytest.mark.parametrize("lr, digits", [
    (0.1, "11"), (0.05, "52"), (0.005, "53"), (0.001, "13"), (2.5e-4, "255"), (1.0, "10"), (10.0, "100"),
    (0.125, "1253"), (3e-9, "39"),
])
def test_lr_encoding_matches_seed_003_and_extends_it(lr, digits):
    assert encode_lr(lr) == digits
    assert decode_lr(digits) == lr


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), float("inf"), 1.5e-10, 0.1 + 0.2, "fast"])
def test_unencodable_rates_are_refused_with_the_value(lr):
    with pytest.raises(RunNameError, match="learning rate"):
        encode_lr(lr)


@pytest.mark.parametrize("digits", ["101", "011", "0", "5", "00"])
def test_non_canonical_rate_digits_are_refused(digits):
    with pytest.raises(RunNameError):
        decode_lr(digits)


def test_seed_003_name_parses_into_its_fields():
    run = parse_run_name(SEED_003 + ".csv")
    assert (run.dataset, run.subset, run.backbone, run.prep, run.pool) == ("coco", "2017", "vgg16", "zmuvs", "avg")
    assert (run.layers, run.units, run.reg, run.lr, run.batch) == (2, 4096, "d5", 0.1, 256)
    assert (run.frozen, run.ft_lr, run.ft_batch, run.aug) == (15, 0.1, 128, "hwrszf")
    assert run.arch == "2x4096d5"
    assert str(run) == SEED_003


def test_options_trail_the_fixed_fields_sorted_and_keep_unknown_keys():
    run = RunName("met", "culture", "resnet50", "inet", "77", 1, 1024, "bn", 2.5e-4, 64,
                  options={"opt": "adam", "loss": "focal", "text": "bilstm128"})
    name = format_run_name(run)
    assert name == "met_culture_resnet50_inet_77_1x1024bn_lr255_b64_loss-focal_opt-adam_text-bilstm128"
    parsed = parse_run_name(name)
    assert parsed == run
    assert parsed.option("loss") == "focal" and parsed.option("sched", "constant") == "constant"
    assert parsed.fields()["text"] == "bilstm128" and parsed.fields()["units"] == 1024


def test_finetune_suffix_and_options_together():
    name = SEED_003 + "_opt-adam"
    run = parse_run_name(name)
    assert run.frozen == 15 and run.option("opt") == "adam"
    assert str(run) == name
    assert parse_run_name("a_b_c_d_e_1x8d0_lr13_b8_all_lr14_b4_none").frozen == "all"


@pytest.mark.parametrize("name, message", [
    ("coco_2017_vgg16_zmuvs_avg_2x4096d5_lr11", "at least 8"),
    ("coco_2017_vgg16_zmuvs_avg_2x4096_lr11_b32", "layers x units"),
    ("coco_2017_vgg16_zmuvs_avg_2x4096d5_lr101_b32", "not canonical"),
    ("coco_2017_vgg16_zmuvs_avg_2x4096d5_lr11_b032", "not canonical"),
    ("coco_2017_vgg16_zmuvs_avg_2x4096d5_lr11_b32_15_lr11", "fine-tuning suffix"),
    ("coco_2017_vgg16_zmuvs_avg_2x4096d5_lr11_b32_opt-adam_loss-focal", "sorted"),
    ("coco_2017_vgg16_zmuvs_avg_2x4096d5_lr11_b32_loss-Focal", "option"),
])
def test_malformed_names_name_the_problem(name, message):
    with pytest.raises(RunNameError, match=message):
        parse_run_name(name)


def test_fields_with_underscores_are_refused_naming_the_field():
    with pytest.raises(MlkitError, match="dataset 'my_data'"):
        RunName("my_data", "v1", "vgg16", "inet", "avg", 1, 8, "d5", 0.1, 8)
    with pytest.raises(RunNameError, match="all four"):
        RunName("coco", "v1", "vgg16", "inet", "avg", 1, 8, "d5", 0.1, 8, frozen=15)


field_text = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,8}", fullmatch=True)
rates = st.builds(
    lambda mantissa, exponent: decode_lr(f"{mantissa}{exponent}"),
    st.integers(1, 99999).filter(lambda m: m % 10), st.integers(1, 9),
) | st.sampled_from([1.0, 2.0, 10.0, 300.0])
options = st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True),
                          st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), max_size=4)
finetune = st.none() | st.tuples(st.integers(0, 500) | st.just("all"), rates, st.integers(1, 4096),
                                 st.from_regex(r"[a-z]{1,8}", fullmatch=True))


@st.composite
def run_names(draw):
    tuned = draw(finetune)
    extra = dict(zip(("frozen", "ft_lr", "ft_batch", "aug"), tuned)) if tuned else {}
    return RunName(
        draw(field_text), draw(field_text), draw(field_text), draw(field_text), draw(field_text),
        draw(st.integers(0, 9)), draw(st.integers(1, 100000)), draw(st.sampled_from(["bn"] + [f"d{n}" for n in range(10)])),
        draw(rates), draw(st.integers(1, 100000)), options=draw(options), **extra,
    )


@settings(max_examples=300, deadline=None)
@given(run_names())
def test_format_and_parse_are_exact_inverses(run):
    name = format_run_name(run)
    assert parse_run_name(name) == run
    assert format_run_name(parse_run_name(name)) == name
    assert "_" not in run.dataset and name.count(".") == 0


# Taps a MobileNetV2 cache may hold: its named depths' layers and two other layers (mlkit.taps).
CACHED_TAPS = ("block_6_expand_relu", "block_10_project_BN", "block_13_expand_relu", "block_16_project_BN",
               "block_3_add", "Conv1_relu")
tap_combinations = st.lists(st.sampled_from(("last",) + CACHED_TAPS), min_size=1, unique=True).map(
    lambda taps: tuple(tap for tap in ("last",) + CACHED_TAPS if tap in taps))


@settings(max_examples=200, deadline=None)
@given(run_names(), tap_combinations)
def test_run_names_round_trip_with_taps(run, taps):
    from mlkit.taps import decode, encode

    code = encode(taps, "mobilenetv2")
    assert (code is None) == (taps == ("last",))
    options = {key: value for key, value in run.options if key != "taps"} | ({"taps": code} if code else {})
    named = dataclasses.replace(run, backbone="mobilenetv2", options=options)
    parsed = parse_run_name(format_run_name(named))
    assert parsed == named
    assert decode(parsed.option("taps"), parsed.backbone, CACHED_TAPS) == taps


@pytest.mark.parametrize("options, branch", [
    ({}, "image"), ({"opt": "adam"}, "image"), ({"text": "bilstm128"}, "both"),
    ({"emb": "64", "text": "lstm32only"}, "caption"),
])
def test_the_caption_option_tells_the_branch(options, branch):
    run = RunName("synth", "all", "vgg16", "inet", "avg", 1, 64, "d2", 0.01, 32, options=options)
    parsed = parse_run_name(str(run))
    assert parsed.branch == branch and parsed.fields()["branch"] == branch
    assert parsed.fields().get("text") == options.get("text")
