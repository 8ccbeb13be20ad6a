"""Test-wide settings: never touch the network, keep runs deterministic and single-threaded enough for 2 cores."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Tests run tiny models made of many small ops: one intra-op thread is faster than two threads synchronising on
# every op (measured ~10-20x on a busy 2-core machine). Subprocess CLIs inherit it through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption(
        "--demo-screenshot",
        default=None,
        metavar="PATH",
        help="the demo's browser test also writes its page screenshot here (the README's: docs/images/demo.png)",
    )
@pytest.fixture(autouse=True, scope="session")
def results_elsewhere(tmp_path_factory):
    """Benchmarks, studies and the smoke config write results files: a test run must never overwrite the committed
    ones under results/ (the README check reads those by path). Subprocesses inherit the variable."""
    from magicbokeh.utils.results import RESULTS_DIR_ENV

    previous = os.environ.get(RESULTS_DIR_ENV)
    os.environ[RESULTS_DIR_ENV] = str(tmp_path_factory.mktemp("results"))
    yield os.environ[RESULTS_DIR_ENV]
    if previous is None:
        os.environ.pop(RESULTS_DIR_ENV, None)
    else:
        os.environ[RESULTS_DIR_ENV] = previous


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
