"""Renderer tests run single-threaded: on a shared 2-core machine, intra-op threads of the many small tensor ops
spin-wait for each other and make tiny renders ~100× slower than one thread."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
