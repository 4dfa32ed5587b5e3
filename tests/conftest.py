import os
import warnings

import pytest
import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A fresh cache for the whole test session (tests never touch the user's cache)."""
    d = tmp_path_factory.mktemp("fl-sim-cache")
    os.environ["FL_SIM_CACHE"] = str(d)
    return str(d)


@pytest.fixture(scope="session")
def tiny_zoo(cache_dir):
    from fl_sim.models.zoo import pretrain_zoo

    return pretrain_zoo("tiny", cache_dir=cache_dir)


def pytest_configure(config):
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
