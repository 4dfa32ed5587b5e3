"""Device placement (fl_sim.models.placement): resolving simulation.device, the one-line errors for hardware this
machine lacks, bf16 autocast as a code path that runs (on the CPU here), and a CUDA run when there is one."""

import numpy as np
import pytest
import torch

from fl_sim import FlSimError
from fl_sim.config import SimulationConfig
from fl_sim.models import placement

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(autouse=True)
def back_to_cpu():
    yield
    placement.use("cpu")


def test_auto_is_cuda_only_where_there_is_cuda():
    assert placement.resolve("auto").type == ("cpu" if NO_CUDA else "cuda")
    assert placement.resolve("cpu") == torch.device("cpu")
    with pytest.raises(FlSimError, match="expected 'auto'"):
        placement.resolve("tpu")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line():
    with pytest.raises(FlSimError, match="simulation.device = 'cuda'.*no CUDA device") as e:
        placement.check(SimulationConfig(device="cuda"))
    assert "\n" not in str(e.value)
    with pytest.raises(FlSimError, match="num_gpus_per_client = 0.5.*no CUDA device"):
        placement.check(SimulationConfig(num_gpus_per_client=0.5))
    placement.check(SimulationConfig(num_gpus_per_client=0.5, ray_address="10.0.0.1:6379"))  # the cluster's GPUs


def test_more_gpus_per_client_than_the_machine_has(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(FlSimError, match="num_gpus_per_client = 2.0 is more than the 1 GPU"):
        placement.check(SimulationConfig(device="cpu", num_gpus_per_client=2))
    assert placement.gpu_count(SimulationConfig(num_gpus_per_client=0.25)) == 1
    assert placement.gpu_count(SimulationConfig()) == 0  # no shares asked: Ray gets no GPU


def test_precision_auto_is_fp32_on_the_cpu():
    placement.use("cpu")
    with placement.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    placement.use("cpu", "bf16")
    with placement.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_bf16_passes_run_and_return_cpu_fp32_tensors(tiny_zoo):
    """The server's labelling path under bf16 autocast: outputs land on the CPU in the dtypes the rest expects,
    and answers mostly agree with fp32's."""
    from fl_sim.mechanisms import akd
    from fl_sim.models.mllm import answer_with_stats, visual_tokens
    from fl_sim.world.data import load_split

    ds = load_split("source", "test", 16, 0, 16, None)
    pr, teacher = tiny_zoo.prompter, tiny_zoo.teacher
    qs = list(ds["question"])
    placement.use("cpu")
    vis = visual_tokens(teacher, pr.pixels(np.asarray(ds["image"])))
    fp32, _ = answer_with_stats(teacher, pr, vis, qs, max_new_tokens=4)
    placement.use("cpu", "bf16")
    vis16 = visual_tokens(teacher, pr.pixels(np.asarray(ds["image"])))
    assert vis16.dtype == torch.float32 and vis16.device.type == "cpu"
    bf16, stats = answer_with_stats(teacher, pr, vis16, qs, max_new_tokens=4)
    assert np.isfinite(stats["confidence"]).all()
    assert np.mean([a == b for a, b in zip(fp32, bf16)]) >= 0.5
    t = akd.teacher_targets(teacher, pr, vis16, qs, max_new_tokens=4)
    assert t["t_logits"].dtype == torch.float16 and t["t_logits"].device.type == "cpu"
    # AKD on a tier under bf16 autocast (CE, KL and feature terms), fp32 adapters that stay finite
    from fl_sim.config import AKDConfig
    from fl_sim.device import model_cache
    from fl_sim.models.adapters import adapter_state, load_adapter_state

    tier = next(iter(tiny_zoo.tiers))
    student, initial = model_cache.adapted_model(str(tiny_zoo.paths[tier]), 4)
    width = lambda m: m.config.text_config.hidden_size  # noqa: E731
    align = torch.nn.Linear(width(model_cache.base_model(str(tiny_zoo.paths[tier]))), width(teacher))
    logs = akd.train_adapters(student, align, lambda step: t, AKDConfig(steps=2, batch_size=16), seed=0)
    assert {"ce", "kl", "feat"} <= set(logs) and all(np.isfinite(v) for v in logs.values())
    after = adapter_state(student)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(after[k], initial[k]) for k in initial)
    load_adapter_state(student, initial)  # the process-wide cached model, as other tests expect it


@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
@pytest.mark.slow
def test_cdcca_on_one_gpu_with_two_clients_sharing_it(tmp_path, cache_dir):
    """Two rounds of cdcca: the server on the GPU, two virtual clients with half a GPU each."""
    from conftest import CDCCA, tiny_config

    from fl_sim.app.run import run_experiment
    from fl_sim.callbacks.results_file import read_results

    cfg = tiny_config(CDCCA, tmp_path, cache_dir, **{"simulation.device": "cuda",
                                                     "simulation.num_gpus_per_client": 0.5,
                                                     "strategy.clients_per_round": 2})
    rows = read_results(run_experiment(cfg))
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["participants"] == 2 and r["failed"] == 0 for r in rows)
    assert 0 <= rows[-1]["acc"]["overall"] <= 1 and rows[-1]["akd_loss"] > 0


def test_cloud_gpu_shares_need_a_gpu_here_but_not_on_a_cluster(monkeypatch):
    from fl_sim.config import CloudConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FlSimError, match="cloud: an actor asks for 0.5 GPU, but this machine has 0 CUDA") as e:
        placement.check(SimulationConfig(device="cpu"), CloudConfig(teacher_gpus=0.5))
    assert "\n" not in str(e.value)
    placement.check(SimulationConfig(device="cpu", ray_address="10.0.0.1:6379"), CloudConfig(teacher_gpus=0.5))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert placement.gpu_count(SimulationConfig(), cloud_gpus=1.0) == 1  # Ray gets the GPU the cloud asks for
