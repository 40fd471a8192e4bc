"""The package's public surface: every name in `__all__` resolves, and importing mlkit stays light."""

import subprocess
import sys

import mlkit


def test_every_public_name_resolves_and_dir_lists_it():
    assert "finetune" in dir(mlkit) and "audit" in dir(mlkit)
    for name in mlkit.__all__:
        assert getattr(mlkit, name) is not None, name


def test_import_mlkit_does_not_load_tensorflow():
    code = "import sys, mlkit; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
