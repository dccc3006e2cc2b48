"""Shared fixtures: a private cache directory, one torch thread and a fixed seed per test.

One thread: the tensors in tests are small, and two OpenMP threads on a 2-core machine
that is also running something else slow down by an order of magnitude (measured).
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("METAFIT_CACHE", str(tmp_path_factory.getbasetemp() / "metafit-cache"))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
