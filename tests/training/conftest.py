"""Fixtures of the training tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Many tiny sequential ops: one intra-op thread is much faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
