"""Shared fixtures: determinism, no network, quiet TensorFlow."""

import os
import random
import socket
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state."""
    random.seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """A test that tries to download anything fails loudly instead of hanging."""
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
            return real_connect(self, address)
        raise RuntimeError(f"test tried to reach the network ({address!r}); tests must run offline")

    real_getaddrinfo = socket.getaddrinfo

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host in (None, "localhost", "::1") or str(host).startswith("127."):
            return real_getaddrinfo(host, *args, **kwargs)
        raise OSError(f"test tried to resolve {host!r}; tests must run offline")

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield


# A real ImageNet-trained MobileNetV2 (see ../shared/pretrained/README.md). Random weights hide the
# faults that matter (batch norm, fine-tuning), so the tests that need it fail when it is missing.
PRETRAINED_MOBILENETV2 = Path(__file__).resolve().parents[2] / "shared" / "pretrained" / "mobilenetv2_nsfwjs.weights.h5"


@pytest.fixture(scope="session")
def pretrained_mobilenetv2():
    """The path of the pretrained MobileNetV2 weights file; the test fails (never skips) without it."""
    if not PRETRAINED_MOBILENETV2.is_file():
        pytest.fail(f"{PRETRAINED_MOBILENETV2} is missing: the shared/ folder must sit beside the checkout")
    return str(PRETRAINED_MOBILENETV2)
