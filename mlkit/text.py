r"""Caption text: offline preprocessing, a fitted vocabulary, and an in-graph vectoriser.

The caption branch (the caption report, docs/references.md) turns free text into token ids in three steps
that need no downloaded data: a regular-expression tokeniser (lower-cased
runs of letters, digits and '_'; punctuation is dropped), stop-word removal
(NLTK's English list when its corpus is installed, else scikit-learn's
`ENGLISH_STOP_WORDS`), and NLTK's Porter stemmer. Nothing here calls
`nltk.download`.

The tokeniser is Python's own `re` with `\w+`, not NLTK's RegexpTokenizer:
since NLTK 3.10 that compiles patterns with the third-party `regex` engine,
whose `\w` also takes combining marks, so its tokens would change with the
NLTK version; `re`'s `\w` is exactly the class the in-graph vectoriser
evaluates with RE2 (`[\pL\pN_]`).

A vocabulary is fitted on the training split's captions only. Ids: 0 pads,
1 is the OOV token (a stem outside the vocabulary), and 2, 3, ... are the
kept stems, most frequent first, at most `num_words` ids in all (the caption report:
10,000). Captions are cut to `max_len` tokens, by default the 95th
percentile of the training captions' token counts, and padded with 0 at the
end. The vocabulary is a plain JSON-serialisable dict, stored in the
bottleneck cache's attributes and in every caption run's config:

    stems        the kept stems; stems[i] has id i + 2
    forms        lower-cased training word -> its stem's id, for every
                 training word whose stem was kept
    stop_words   the list used at fitting, so encoding never depends on
                 whether NLTK's corpus is installed where it runs
    size         ids in use, 2 + len(stems): the embedding's input size
    max_len      tokens per caption
    ...          and how it was made (num_words, stop-word source, counts)

Two encoders read it. `encode_captions` (Python, NLTK) stems every word.
`caption_vectorizer` is a Keras layer made of TensorFlow graph ops only, so
a SavedModel holding it runs without mlkit or NLTK; it cannot stem, so it
looks words up in `forms`. The two agree on every caption whose words
(other than stop words) all occurred in the training captions; a word never
seen there is OOV in the graph even when the Python encoder finds its stem
in the vocabulary ("circling" when only "circle" was seen).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

import keras
import numpy as np

from mlkit.errors import MlkitError

PAD_ID = 0
OOV_ID = 1
FIRST_STEM_ID = 2
DEFAULT_NUM_WORDS = 10000
MAX_LEN_PERCENTILE = 95
VOCABULARY_FORMAT = 1
# Python's `re` `\w` on str and RE2's `[\pL\pN_]` match the same characters
# (they differ only on code points newer than Python's Unicode tables).
WORD = re.compile(r"\w+")
GRAPH_NON_WORD = r"[^\pL\pN_]+"
# The graph's table maps stop words here; those tokens are then dropped.
DROPPED_ID = -1
VOCABULARY_KEYS = ("format", "stems", "forms", "stop_words", "size", "max_len")


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem import PorterStemmer

    return lru_cache(maxsize=1 << 16)(PorterStemmer().stem)


@lru_cache(maxsize=1)
def default_stop_words():
    """English stop words from NLTK's corpus when installed, else scikit-learn's list.

    Returns:
        (words, source): a sorted tuple of lower-case words and "nltk" or "scikit-learn".
    """
    try:
        from nltk.corpus import stopwords

        return tuple(sorted(set(stopwords.words("english")))), "nltk"
    except LookupError:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        return tuple(sorted(ENGLISH_STOP_WORDS)), "scikit-learn"


def tokenize(text):
    """Lower-cased word tokens of a caption: runs of letters, digits and '_' (punctuation dropped).

    Args:
        text: a caption, or None for a row without one.

    Returns:
        A list of strings; empty for None or blank text.

    Raises:
        MlkitError: when `text` is neither a string nor None.

    Example:
        tokenize("Two red Circles, one café!")  # ['two', 'red', 'circles', 'one', 'café']
    """
    if text is None:
        return []
    if not isinstance(text, str):
        raise MlkitError(f"caption {text!r} is not text (got {type(text).__name__})")
    return WORD.findall(text.lower())


def stem(word):
    """The Porter stem of one lower-cased word ("circles" -> "circl")."""
    return _stemmer()(word)


def content_words(text, stop_words=None):
    """The caption's tokens without stop words, still unstemmed.

    Args:
        text: a caption or None.
        stop_words: a set of lower-case words. Defaults to `default_stop_words()`.
    """
    stop_words = set(default_stop_words()[0]) if stop_words is None else stop_words
    return [word for word in tokenize(text) if word not in stop_words]


def preprocess(text, stop_words=None):
    """Tokenise, drop stop words and Porter-stem one caption.

    Example:
        preprocess("The circles are RED")  # ['circl', 'red']
    """
    return [stem(word) for word in content_words(text, stop_words)]


def fit_vocabulary(
    captions: Iterable[str | None], num_words: int = DEFAULT_NUM_WORDS, max_len: int | None = None,
) -> dict:
    """Fits a caption vocabulary on training captions.

    Args:
        captions: the training split's captions (str, or None for rows without one).
        num_words: the most ids in all, padding and OOV included, so
            `num_words - 2` stems are kept, most frequent first (ties in
            alphabetical order). Defaults to 10000.
        max_len: tokens per caption. Defaults to the 95th percentile of the
            training captions' token counts (at least 1).

    Returns:
        The vocabulary dict described in this module's docstring.

    Raises:
        MlkitError: for a bad `num_words` or `max_len`, or when no caption is given.

    Example:
        vocabulary = fit_vocabulary(["a red circle", "two blue squares"], num_words=100)
    """
    if isinstance(num_words, bool) or not isinstance(num_words, (int, np.integer)) or num_words < FIRST_STEM_ID + 1:
        raise MlkitError(
            f"--num-words {num_words!r} must be an integer >= {FIRST_STEM_ID + 1} (padding, OOV and a word)")
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1):
        raise MlkitError(f"--max-len {max_len!r} must be a positive integer (or left out to choose it from the data)")
    stop_words, source = default_stop_words()
    stop_set = set(stop_words)
    documents = [content_words(text, stop_set) for text in captions if text is not None]
    if not documents:
        raise MlkitError("no training row has a caption to fit the vocabulary on; add captions or drop --captions")
    counts: Counter[str] = Counter()
    stem_of: dict[str, str] = {}
    for words in documents:
        for word in words:
            stem_of.setdefault(word, stem(word))
            counts[stem_of[word]] += 1
    kept = sorted(counts, key=lambda s: (-counts[s], s))[: int(num_words) - FIRST_STEM_ID]
    ids = {s: FIRST_STEM_ID + i for i, s in enumerate(kept)}
    lengths = [len(words) for words in documents]
    chosen = max(1, math.ceil(np.percentile(lengths, MAX_LEN_PERCENTILE))) if max_len is None else int(max_len)
    return {
        "format": VOCABULARY_FORMAT,
        "tokenizer": f"re {WORD.pattern!r} on lower-cased text",
        "stemmer": "nltk PorterStemmer",
        "stop_words_source": source,
        "stop_words": list(stop_words),
        "num_words": int(num_words),
        "size": FIRST_STEM_ID + len(kept),
        "stems": kept,
        "forms": {word: ids[s] for word, s in sorted(stem_of.items()) if s in ids},
        "max_len": chosen,
        "max_len_from": "given" if max_len is not None else f"p{MAX_LEN_PERCENTILE}",
        "train_captions": len(documents),
        "train_stems": len(counts),
    }


def check_vocabulary(vocabulary):
    """Returns the vocabulary if it has what the encoders need, else raises MlkitError."""
    if not isinstance(vocabulary, dict):
        raise MlkitError(f"a caption vocabulary is a dict from fit_vocabulary, not {type(vocabulary).__name__}")
    missing = [key for key in VOCABULARY_KEYS if key not in vocabulary]
    if missing:
        raise MlkitError(
            f"caption vocabulary lacks {', '.join(missing)}; refit it with `mlkit cache-features ... --captions`")
    if vocabulary["format"] != VOCABULARY_FORMAT:
        raise MlkitError(f"caption vocabulary format {vocabulary['format']!r} is not {VOCABULARY_FORMAT}; "
                         "refit it with this mlkit version's `mlkit cache-features ... --captions`")
    return vocabulary


class CaptionEncoder:
    """Turns captions into token ids with a fitted vocabulary (Python and NLTK).

    Args:
        vocabulary: a dict from `fit_vocabulary`.

    Example:
        encoder = CaptionEncoder(vocabulary)
        encoder.ids("a red circle")           # [3, 2], not cut to max_len
        encoder.encode(["a red circle", None])  # int32 (2, max_len), 0-padded
    """

    def __init__(self, vocabulary):
        self.vocabulary = check_vocabulary(vocabulary)
        self.max_len = int(vocabulary["max_len"])
        self.stop_words = set(vocabulary["stop_words"])
        self.forms = vocabulary["forms"]
        self.stem_ids = {s: FIRST_STEM_ID + i for i, s in enumerate(vocabulary["stems"])}

    def ids(self, text):
        """All of a caption's ids (stop words dropped, OOV as 1), before cutting to `max_len`."""
        return [self.forms.get(word) or self.stem_ids.get(stem(word), OOV_ID)
                for word in content_words(text, self.stop_words)]

    def encode(self, captions):
        """An int32 array (len(captions), max_len): ids cut to max_len, padded with 0 at the end."""
        captions = list(captions)
        out = np.zeros((len(captions), self.max_len), dtype="int32")
        for row, text in enumerate(captions):
            ids = self.ids(text)[: self.max_len]
            out[row, : len(ids)] = ids
        return out


def encode_captions(captions: Iterable[str | None], vocabulary: dict) -> np.ndarray:
    """Token ids of captions, int32 (N, max_len), 0-padded; see `CaptionEncoder`."""
    return CaptionEncoder(vocabulary).encode(captions)


@keras.saving.register_keras_serializable(package="mlkit")
class CaptionVectorizer(keras.layers.Layer):
    """Maps raw captions to token ids inside the graph: string (batch,) -> int32 (batch, max_len).

    Lower-cases (UTF-8), splits on everything but letters, digits and '_',
    looks every word up in one static hash table (training word forms -> their
    stem's id, stop words -> dropped, anything else -> OOV 1), drops stop
    words, keeps the first `max_len` ids and pads with 0 at the end. It uses
    TensorFlow ops only (no py_function), so a SavedModel that contains it
    runs with TensorFlow alone; loading a `.keras` file that contains it
    needs `import mlkit.text` first (that registers the class).

    It equals `encode_captions` on captions whose content words all occurred
    in the training captions. A word never seen in training is OOV here even
    when its stem is in the vocabulary (no stemmer in the graph), and words
    with letters newer than Python's Unicode tables may split differently.
    Input of shape (batch, 1) is accepted too.

    Args:
        vocabulary: a dict from `fit_vocabulary`.
        **kwargs: passed to `keras.layers.Layer` (name, ...).
    """

    def __init__(self, vocabulary, **kwargs):
        kwargs.setdefault("trainable", False)
        kwargs.setdefault("dtype", "string")
        super().__init__(**kwargs)
        import tensorflow as tf

        self.vocabulary = check_vocabulary(vocabulary)
        self.max_len = int(vocabulary["max_len"])
        forms = vocabulary["forms"]
        keys = list(forms) + list(vocabulary["stop_words"])
        values = [int(forms[word]) for word in forms] + [DROPPED_ID] * len(vocabulary["stop_words"])
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.string), tf.constant(values, tf.int32)),
            default_value=OOV_ID,
        )

    def call(self, inputs):
        import tensorflow as tf

        text = tf.convert_to_tensor(inputs, dtype=tf.string)
        if text.shape.rank == 2:
            text = tf.squeeze(text, axis=-1)
        text = tf.strings.regex_replace(tf.strings.lower(text, encoding="utf-8"), GRAPH_NON_WORD, " ")
        words = tf.strings.split(text)
        ids = tf.ragged.map_flat_values(self.table.lookup, words)
        ids = tf.ragged.boolean_mask(ids, ids != DROPPED_ID)[:, : self.max_len]
        return ids.to_tensor(default_value=PAD_ID, shape=[None, self.max_len])

    def compute_output_spec(self, inputs):
        return keras.KerasTensor((inputs.shape[0], self.max_len), dtype="int32")

    def get_config(self):
        return {**super().get_config(), "vocabulary": self.vocabulary}


def caption_vectorizer(vocabulary: dict, name: str = "caption_vectorizer") -> CaptionVectorizer:
    """A `CaptionVectorizer` layer for a fitted vocabulary (see its docstring).

    Example:
        captions = keras.Input(shape=(), dtype="string", name="caption")
        tokens = caption_vectorizer(vocabulary)(captions)  # int32 (batch, max_len)
    """
    return CaptionVectorizer(vocabulary, name=name)
