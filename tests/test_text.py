"""Caption text: offline tokenisation, stop words, stemming, the fitted vocabulary and the in-graph vectoriser."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mlkit.data import read_manifest, split_manifest, synthesize
from mlkit.errors import MlkitError
from mlkit.text import (
    OOV_ID,
    CaptionEncoder,
    caption_vectorizer,
    content_words,
    default_stop_words,
    encode_captions,
    fit_vocabulary,
    preprocess,
    stem,
    tokenize,
)

LONG = " ".join(["red circle"] * 5000)
# Seen words in odd spellings: case, punctuation, non-ASCII letters, digits and '_'.
ODD = ["Café RED circle — naïve 東京!", "İstanbul's ÜBER-square, 3 rings_2", "", "   ", "?!...", LONG]


def test_tokenize_lowercases_and_keeps_letters_digits_and_underscores():
    assert tokenize("Two red Circles, one café!") == ["two", "red", "circles", "one", "café"]
    assert tokenize("naïve ÜBER-square 東京 3.5 rings_2") == ["naïve", "über", "square", "東京", "3", "5", "rings_2"]
    assert tokenize("it's a—test") == ["it", "s", "a", "test"]
    assert tokenize("") == [] and tokenize("  \n\t ") == [] and tokenize("?!...") == [] and tokenize(None) == []
    assert len(tokenize(LONG)) == 10000
    with pytest.raises(MlkitError, match="caption 3.5 is not text"):
        tokenize(3.5)


def test_stop_words_come_from_an_installed_list_and_are_dropped_before_stemming():
    words, source = default_stop_words()
    assert source in ("nltk", "scikit-learn") and {"the", "and", "is", "a"} <= set(words)
    assert not {"red", "circle", "square", "yellow"} & set(words)
    assert content_words("The circle is on a red square") == ["circle", "red", "square"]
    assert content_words("the and is") == []


def test_porter_stemming_joins_word_forms():
    assert {stem(w) for w in ("play", "played", "playing", "plays")} == {"play"}  # the caption report's example
    assert stem("circles") == stem("circle") == "circl"
    assert preprocess("The CIRCLES are red; circled twice") == ["circl", "red", "circl", "twice"]
    assert preprocess(None) == [] and preprocess("café naïve") == ["café", "naïv"]


def test_vocabulary_is_capped_by_frequency_and_json_serialisable():
    captions = ["red circle", "red circles", "a red square", "blue square", "green ring", None]
    vocabulary = fit_vocabulary(captions, num_words=5)
    assert vocabulary["stems"] == ["red", "circl", "squar"]  # counts 3, 2, 2 (ties alphabetical)
    assert vocabulary["size"] == 5 and vocabulary["forms"] == {"circle": 3, "circles": 3, "red": 2, "square": 4}
    assert vocabulary["max_len"] == 2 and vocabulary["max_len_from"] == "p95" and vocabulary["train_captions"] == 5
    assert json.loads(json.dumps(vocabulary)) == vocabulary
    assert fit_vocabulary(captions, max_len=7)["max_len"] == 7
    assert fit_vocabulary(["word " * 50] + ["word"] * 19)["max_len"] == 4  # the 95th percentile, not the longest


@pytest.mark.parametrize("arguments, message", [
    ({"captions": [None, None]}, "no training row has a caption"),
    ({"captions": ["red"], "num_words": 2}, "--num-words 2"),
    ({"captions": ["red"], "max_len": 0}, "--max-len 0"),
    ({"captions": ["red", 7]}, "caption 7 is not text"),
])
def test_bad_vocabulary_settings_name_the_value(arguments, message):
    with pytest.raises(MlkitError, match=message):
        fit_vocabulary(**arguments)


def test_encoding_pads_cuts_and_marks_unknown_stems_oov():
    vocabulary = fit_vocabulary(["red circle", "blue square", "red square"], max_len=3)
    encoder = CaptionEncoder(vocabulary)
    red, square = encoder.ids("red square")
    tokens = encoder.encode(["red square", "", None, "the purple square", "circling squares", LONG])
    assert tokens.dtype == np.int32 and tokens.shape == (6, 3)
    assert tokens[0].tolist() == [red, square, 0]
    assert tokens[1].tolist() == tokens[2].tolist() == [0, 0, 0]
    assert tokens[3].tolist() == [OOV_ID, square, 0]
    assert tokens[4].tolist() == [encoder.ids("circle")[0], square, 0]  # an unseen form of a known stem
    assert tokens[5].tolist() == [red, encoder.ids("circle")[0], red] and len(encoder.ids(LONG)) == 10000
    with pytest.raises(MlkitError, match="lacks"):
        CaptionEncoder({"stems": []})


@pytest.fixture(scope="module")
def synthetic_captions(tmp_path_factory):
    """The synthetic dataset's captions by split, plus odd captions built from words seen in training."""
    path = synthesize(tmp_path_factory.mktemp("synth") / "synth", n=200, size=16, seed=5)
    split_manifest(path, val=0.25, test=0.0, seed=0)
    table = read_manifest(path)
    captions, splits = np.array(table.captions(), dtype=object), table.splits()
    train = list(captions[splits == "train"]) + ODD
    return train, list(captions[splits == "val"])


def graph_tokens(vectorizer, captions):
    import tensorflow as tf

    return vectorizer(tf.constant(captions)).numpy()


def test_the_graph_vectoriser_equals_the_python_encoder_on_captions_of_seen_words(synthetic_captions):
    train, val = synthetic_captions
    vocabulary = fit_vocabulary(train, max_len=6)
    vectorizer = caption_vectorizer(vocabulary)
    seen = set(vocabulary["forms"]) | set(vocabulary["stop_words"])
    val_seen = [c for c in val if set(tokenize(c)) <= seen]
    assert len(val_seen) > 0.9 * len(val)
    for captions in (train, val_seen):
        np.testing.assert_array_equal(graph_tokens(vectorizer, captions), encode_captions(captions, vocabulary))
    column = graph_tokens(vectorizer, np.array(train[:4])[:, None])
    np.testing.assert_array_equal(column, encode_captions(train[:4], vocabulary))
    # An unseen form of a known stem: Python stems it, the graph (no stemmer) says OOV.
    python, graph = encode_captions(["circling"], vocabulary)[0], graph_tokens(vectorizer, ["circling"])[0]
    assert python[0] == vocabulary["forms"]["circle"] and graph[0] == OOV_ID


SERVE = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    served = tf.saved_model.load(sys.argv[1])
    scores = served.serve(tf.constant(json.loads(sys.argv[2])))
    assert not any(name == "mlkit" or name.startswith("mlkit.") for name in sys.modules), "imported mlkit"
    print(json.dumps(scores.numpy().tolist()))
    """
)


def test_a_model_with_the_vectoriser_saves_to_keras_and_serves_as_a_savedmodel_without_mlkit(
        synthetic_captions, tmp_path):
    import keras
    import tensorflow as tf

    train, val = synthetic_captions
    vocabulary = fit_vocabulary(train)
    captions = keras.Input(shape=(), dtype="string", name="caption")
    tokens = caption_vectorizer(vocabulary)(captions)
    x = keras.layers.Embedding(vocabulary["size"], 4, mask_zero=True)(tokens)
    model = keras.Model(captions, keras.layers.Dense(3)(keras.layers.LSTM(4)(x)))
    batch = val[:5] + ["", "Café RED circle — naïve 東京!"]
    expected = model.predict(tf.constant(batch), verbose=0)

    model.save(tmp_path / "captions.keras")
    again = keras.models.load_model(tmp_path / "captions.keras")
    np.testing.assert_allclose(again.predict(tf.constant(batch), verbose=0), expected, rtol=1e-6)
    assert again.get_layer("caption_vectorizer").vocabulary == vocabulary

    model.export(tmp_path / "served", verbose=False)
    result = subprocess.run([sys.executable, "-c", SERVE, str(tmp_path / "served"), json.dumps(batch)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.array(json.loads(result.stdout.splitlines()[-1])), expected, rtol=1e-5, atol=1e-6)
