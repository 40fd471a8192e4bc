"""The LR range test: its suggestions on a known curve, and a run on a tiny cache."""

from pathlib import Path

import numpy as np
import pytest
from test_tuning import make_cache

from mlkit.errors import MlkitError
from mlkit.tuning.lr_range import suggest


def test_suggestions_on_a_known_curve():
    lrs = np.geomspace(1e-5, 10, 121)
    log_lr = np.log10(lrs)
    # Falls fastest at lr = 1e-2, bottoms out near 1, then climbs.
    loss = 1 - 0.5 * np.tanh(2 * (log_lr + 2)) + 0.3 * np.clip(log_lr, 0, None) ** 2
    steepest, min_over_10 = suggest(lrs, loss)
    assert steepest == pytest.approx(1e-2, rel=0.1)
    assert min_over_10 == pytest.approx(lrs[np.argmin(loss)] / 10)
    early_minimum = np.r_[loss[:4], loss[3] + np.arange(1, 5)]
    assert suggest(lrs[:8], early_minimum) == (None, pytest.approx(lrs[3] / 10))


def test_lr_find_writes_the_curve_and_stops_on_divergence(tmp_path, capsys):
    import matplotlib

    from mlkit.tuning import lr_find

    matplotlib.use("svg")  # a notebook user's backend: plotting must not switch it
    cache = make_cache(tmp_path)
    result = lr_find(cache, tmp_path, units=8, batch=16, start_lr=1e-4, end_lr=1e4, steps=40, diverge=3.0)
    assert matplotlib.get_backend() == "svg"
    assert result.stopped == "diverged" and 10 < len(result.lrs) < 40
    assert result.suggestion in (result.steepest, result.min_over_10) and result.method in capsys.readouterr().out
    assert np.all(np.diff(result.lrs) > 0)
    assert (tmp_path / "tuning" / "lr-find").is_dir()
    assert Path(result.plot).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(MlkitError, match="--start-lr"):
        lr_find(cache, tmp_path, start_lr=1.0, end_lr=0.1)
