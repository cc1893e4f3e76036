"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (restored after): the test models are tiny, so one thread
    is fastest, spares a shared 2-core CI box oversubscription, and keeps bit-exact comparisons
    independent of the thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
