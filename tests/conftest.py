import os
import warnings

import pytest
import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def two_torch_threads():
    """Every test starts with 2 torch threads: a test that runs worker code in-process (a worker sets its
    own count) must not change the float sums, and so the bytes, of the models later tests train."""
    yield
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


# family -> (image tokens in a prompt, visual tokens per image) of experiments/make_tiny_checkpoints.py's
# tiny checkpoints, for the fleet's 48-pixel images
FAMILY_GEOMETRY = {"idefics3": (20, 80),  # 2x2 sub-images + a global view, 16 patches each, pixel shuffle by 2
                   "qwen2-vl": (9, 36),  # 6x6 patches of the resized image, merged 2x2
                   "gemma3": (4, 16),  # 4x4 patches pooled to 2x2
                   "llava-onevision": (24, 20)}  # base view + 2x2 tiles of 4 tokens, a newline after each of 4 rows


@pytest.fixture(scope="session")
def family_checkpoints(tmp_path_factory):
    """family -> folder of a tiny random checkpoint with its own family's processor (and a CLIP+Llama LLaVA)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments" / "make_tiny_checkpoints.py"
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoints", script)
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    root = tmp_path_factory.mktemp("model-families")
    return {f: make.build(f, root / f) for f in (*FAMILY_GEOMETRY, "clip-llama")}


def pytest_collection_modifyitems(config, items):
    """Everything under ``tests/integration/`` (Flower, Ray, the CLI end to end) is ``slow``."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.slow)


def pytest_configure(config):
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# ---------------------------------------------------------------- tiny experiments shared by the tests
TINY_FLEET = {"num_devices": 4, "samples_per_round": 8, "train_size": 64, "shift_round": [2, 2],
              "active_fraction": {"low": 1.0, "high": 1.0}}
TINY_SIM = {"num_cpus": 2, "round_timeout_s": 300}
# the teacher and evaluation in the cloud process (each actor is a process start; the AKD actors stay):
# tests/integration/test_cloud_on_ray.py runs the cloud on actors end to end
TINY_CLOUD = {"teacher_replicas": 0, "eval_actors": 0}
# fedavg on four devices, every one kept (end-to-end simulation tests)
FEDAVG = {"zoo": "tiny", "rounds": 2, "seed": 5, "fleet": TINY_FLEET,
          "strategy": {"name": "fedavg", "clients_per_round": 3, "over_commit": 1.0, "local_steps": 1,
                       "batch_size": 4},
          "eval": {"n_test": 12}, "simulation": TINY_SIM, "cloud": TINY_CLOUD}
# CD-CCA with small AKD and a half-share uplink budget
CDCCA = {"zoo": "tiny", "rounds": 2, "seed": 3, "fleet": TINY_FLEET,
         "strategy": {"name": "cdcca", "clients_per_round": 4, "over_commit": 1.0, "lora_r": 4,
                      "uts": {"budget": 0.5}, "akd": {"steps": 3, "batch_size": 8, "replay": 16, "anchor_size": 32,
                                                          "extra_questions": 0},
                      "dwc": {"max_density": 0.2}},
         "eval": {"n_test": 12}, "simulation": TINY_SIM, "cloud": TINY_CLOUD}
# the base of comparison tests: over-commitment, so some devices straggle
COMPARE = {"zoo": "tiny", "rounds": 2, "seed": 0, "fleet": TINY_FLEET,
           "strategy": {"name": "source-only", "clients_per_round": 3, "over_commit": 1.34, "lora_r": 4,
                        "uts": {"budget": 0.5}, "akd": {"steps": 3, "batch_size": 8, "replay": 16, "anchor_size": 32},
                        "dwc": {"max_density": 0.2}},
           "eval": {"n_test": 8}, "simulation": TINY_SIM, "cloud": TINY_CLOUD}


def tiny_data(base: dict, cache_dir: str, output_dir) -> dict:
    """A deep copy of ``base`` writing under ``output_dir`` with the test session's cache."""
    import json

    return json.loads(json.dumps(base)) | {"cache_dir": cache_dir, "output_dir": str(output_dir)}


def tiny_config(base: dict, tmp_path, cache_dir: str, **over):
    """``base`` validated, with runs under ``tmp_path/runs`` and dotted-key overrides ``over``."""
    from fl_sim.config import parse_config

    return parse_config(tiny_data(base, cache_dir, tmp_path / "runs"), over)


def tiny_run(base: dict, tmp_path_factory, cache_dir: str, name: str, **over):
    """``(tmp dir, run dir, results)`` of ``base`` run once through Flower (for module-scoped fixtures)."""
    from fl_sim.app.run import run_experiment
    from fl_sim.callbacks.results_file import read_results

    tmp = tmp_path_factory.mktemp(name)
    run_dir = run_experiment(tiny_config(base, tmp, cache_dir, **over))
    return tmp, run_dir, read_results(run_dir)


@pytest.fixture(scope="session")
def cdcca_run(tmp_path_factory, cache_dir, tiny_zoo):
    """``(run dir, results)`` of ``CDCCA`` run once (shared by the modules that compare with it)."""
    return tiny_run(CDCCA, tmp_path_factory, cache_dir, "cdcca")[1:]
