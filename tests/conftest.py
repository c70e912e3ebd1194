import atexit
import os
import shutil
import socket
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# trackio's store and the dynamic-module cache (evaluate's metric scripts, remote model code) go to a
# folder of this session, never the user's caches; both are read once, when trackio/evaluate are imported.
_STORES = tempfile.mkdtemp(prefix="hf-kgelu-tests-")
atexit.register(shutil.rmtree, _STORES, ignore_errors=True)
os.environ.setdefault("TRACKIO_DIR", os.path.join(_STORES, "trackio"))
os.environ.setdefault("HF_MODULES_CACHE", os.path.join(_STORES, "modules"))
# One thread: on 2 shared cores, OpenMP spin-waiting under load makes 2 threads up to ~90× slower.
torch.set_num_threads(1)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test (local sockets are allowed)."""
    connect = socket.socket.connect

    def refuse(self, address, *args):
        if self.family != socket.AF_UNIX:
            raise AssertionError(f"network connection attempted to {address}")
        return connect(self, address, *args)

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
