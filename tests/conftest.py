"""Shared fixtures: a private cache directory and fixed torch threads for every test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("METAFIT_CACHE", str(tmp_path_factory.getbasetemp() / "metafit-cache"))
    torch.manual_seed(0)
    yield
