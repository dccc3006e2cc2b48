"""Shared fixtures: a private cache directory, one torch thread and a fixed seed per test;
``decoded``, the images whose pixels PIL decodes during a test.

One thread: the tensors in tests are small, and two OpenMP threads on a 2-core machine
that is also running something else slow down by an order of magnitude (measured).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("METAFIT_CACHE", str(tmp_path_factory.getbasetemp() / "metafit-cache"))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image whose pixels PIL decodes from now on (a pixel bomb must be
    refused from its header, before this grows)."""
    from PIL import ImageFile

    sizes: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        sizes.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return sizes
