"""Device behaviours without Flower: each local objective term, label sources, the typed task, and a toy
strategy added the way the README says (a server file, a device file, one registry line)."""

import math

import pytest
import torch
from conftest import FEDAVG, tiny_config

from fl_sim import FlSimError


@pytest.fixture(scope="module")
def device_env(tmp_path_factory, cache_dir, tiny_zoo):
    """A tiny run's device environment on disk, as ``fl_sim.app.run`` writes it."""
    from fl_sim.device.environment import device_environment, load_device_env
    from fl_sim.fleet.profiles import make_fleet, save_trace

    tmp = tmp_path_factory.mktemp("devices")
    cfg = tiny_config(FEDAVG, tmp, cache_dir)
    fleet = make_fleet(cfg.fleet, list(tiny_zoo.tiers), cfg.seed)
    save_trace(fleet, tmp / "fleet.json")
    env = device_environment(cfg, tmp / "fleet.json", len(fleet), {t: str(tiny_zoo.paths[t]) for t in tiny_zoo.tiers},
                             None)
    return load_device_env(str(env.write(tmp)))


def _settings(**over):
    from clients.local_training import LocalTrainingSettings

    return LocalTrainingSettings(**({"local_steps": 3, "batch_size": 4, "lr": 0.05, "labels": "pseudo",
                                     "objective": "ce", "proximal_mu": 0.0} | over))


def _round(env, adapter=None, **over):
    from clients.behaviour import DeviceRound
    from clients.local_training import run_local_round

    return run_local_round(DeviceRound(env, 1, 2), _settings(**over), adapter)


def _distance(a: dict, b: dict) -> float:
    return math.sqrt(sum(float(((a[k] - b[k]) ** 2).sum()) for k in a))


def test_the_proximal_term_is_in_the_objective_and_holds_devices_near_what_they_received(device_env):
    from clients.local_training import local_objective

    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(2, 5, 11, generator=g), torch.tensor([[-100, -100, 3, 4, -100]] * 2)
    params, anchor = [torch.ones(3)], [torch.zeros(3)]
    ce = local_objective(logits, labels, _settings(), params, anchor)
    prox = local_objective(logits, labels, _settings(proximal_mu=0.5), params, anchor)
    assert float(prox - ce) == pytest.approx(0.5 / 2 * 3)

    from clients.behaviour import DeviceRound

    _, start = DeviceRound(device_env, 1, 2).model()
    free, m_free = _round(device_env)
    held, m_held = _round(device_env, proximal_mu=1e4)
    assert _distance(held, start) < 0.5 * _distance(free, start)
    assert m_held["loss"] != m_free["loss"]


def test_tent_minimises_the_entropy_of_its_own_answers(device_env):
    from clients.local_training import answer_entropy, local_objective

    uniform = torch.zeros(1, 4, 7)
    labels = torch.tensor([[-100, 2, 2, -100]])
    assert float(answer_entropy(uniform, labels)[0]) == pytest.approx(math.log(7))
    peaked = torch.full((1, 4, 7), -50.0)
    peaked[..., 0] = 50.0
    assert float(local_objective(peaked, labels, _settings(objective="entropy"), [], [])) == pytest.approx(0, abs=1e-6)
    # on a device: a different objective, so different adapters and loss than CE on the same samples
    ce_state, ce = _round(device_env)
    ent_state, ent = _round(device_env, objective="entropy")
    assert ent["loss"] != ce["loss"] and _distance(ent_state, ce_state) > 0


def test_oracle_labels_train_on_the_true_answers_and_pseudo_on_the_devices_own(device_env, monkeypatch):
    from clients.behaviour import DeviceRound
    from fl_sim.models.mllm import Prompter

    seen = []
    real = Prompter.train_batch

    def spy(self, questions, answers):
        seen.append(list(answers))
        return real(self, questions, answers)

    monkeypatch.setattr(Prompter, "train_batch", spy)
    truth = set(DeviceRound(device_env, 1, 2).samples()["answer"])
    _round(device_env, labels="oracle", local_steps=2)
    oracle, seen[:] = list(seen), []
    _round(device_env, labels="pseudo", local_steps=2)
    assert oracle and all(a in truth for batch in oracle for a in batch)
    assert seen and seen != oracle  # the tiny model's own answers are not the truth


def test_strategies_send_their_device_settings(tmp_path, cache_dir):
    from fl_sim.fleet.profiles import make_fleet
    from fl_sim.plugins import get_strategy
    from fl_sim.server.strategy import RunContext

    cfg = tiny_config(FEDAVG, tmp_path, cache_dir, **{"strategy.proximal_mu": 0.3, "strategy.labels": "oracle"})
    fleet = make_fleet(cfg.fleet, ["tiny-high", "tiny-low"], cfg.seed)

    def settings(name):
        s = get_strategy(name)(RunContext(cfg, fleet, {}, tmp_path))
        task = s.device_task(fleet[0], 1)
        return task.behaviour, s.device.Settings.model_validate(task.settings)

    assert settings("fedavg") == ("clients.local_training", _settings(local_steps=1, batch_size=4, lr=2e-3,
                                                                       labels="oracle"))
    assert settings("fedprox")[1].proximal_mu == 0.3
    assert settings("tent")[1].objective == "entropy" and settings("tent")[1].labels == "pseudo"
    assert settings("source-only")[1].local_steps == 0


def test_a_task_is_validated_and_defaults_are_defined_once():
    from pydantic import ValidationError

    from clients.cdcca_device import CDCCADeviceSettings
    from fl_sim.mechanisms.uts import UTSConfig
    from fl_sim.protocol.device_task import DeviceTask, read_task, task_record

    s = CDCCADeviceSettings(held_version=1, target_version=3, uts=UTSConfig())
    task = DeviceTask(behaviour="clients.cdcca_device", round=4, settings=s.model_dump(mode="json"))
    back, values = read_task({"task": task_record(task, {"dwc_chain": [b"ab"]})})
    assert back == task and values == {"dwc_chain": [b"ab"]}
    assert CDCCADeviceSettings.model_validate(back.settings).uts.normalize is UTSConfig().normalize
    with pytest.raises(ValidationError):
        CDCCADeviceSettings.model_validate(back.settings | {"uts_normalize": False})  # no stray keys
    with pytest.raises(ValidationError):
        CDCCADeviceSettings.model_validate({"held_version": 1, "target_version": 3})  # nothing defaulted on the device


def test_unknown_device_behaviours_are_one_line_errors():
    from clients.behaviour import load_behaviour

    with pytest.raises(FlSimError, match="no such module"):
        load_behaviour("clients.no_such_behaviour")
    with pytest.raises(FlSimError, match="defines no device behaviour"):
        load_behaviour("fl_sim.mechanisms.dwc")


TOY_DEVICE = '''"""toy_device: the device adds ``step`` to every adapter value it received and sends it back."""
from flwr.app import MetricRecord
from pydantic import BaseModel

from clients.behaviour import DeviceBehaviour
from fl_sim.protocol.records import from_array_record, to_array_record


class ToySettings(BaseModel):
    step: float


class ToyDevice(DeviceBehaviour):
    Settings = ToySettings

    @classmethod
    def run(cls, dev, settings, content):
        state = {k: v + settings.step for k, v in from_array_record(content["adapter"]).items()}
        metrics = {"n_infer": 0.0, "n_train": 1.0, "online_acc": float("nan"), "loss": 0.0}
        return {"metrics": MetricRecord(metrics), "adapter": to_array_record(state)}
'''

TOY_STRATEGY = '''"""toy: devices add 0.25 to their tier's adapters; the server averages them (fedavg's aggregation)."""
from fl_sim.server.strategy import FleetStrategy
from toy_device import ToyDevice, ToySettings


class Toy(FleetStrategy):
    name = "toy"
    device = ToyDevice

    def device_settings(self, p, server_round):
        return ToySettings(step=0.25)
'''


@pytest.mark.slow
def test_a_new_strategy_is_two_files_and_one_registry_line(tmp_path, cache_dir, tiny_zoo, monkeypatch):
    import json
    import sys

    from fl_sim import plugins
    from fl_sim.app.run import run_experiment
    from fl_sim.callbacks.checkpoint_files import load_checkpoint
    from fl_sim.callbacks.results_file import read_results
    from fl_sim.device import model_cache

    code = tmp_path / "code"
    code.mkdir()
    (code / "toy_device.py").write_text(TOY_DEVICE)
    (code / "toy_strategy.py").write_text(TOY_STRATEGY)
    monkeypatch.syspath_prepend(str(code))  # Flower hands the driver's sys.path to its Ray workers
    monkeypatch.setitem(plugins.STRATEGIES, "toy", plugins.StrategyEntry("toy_strategy:Toy"))
    run_dir = run_experiment(tiny_config(FEDAVG, tmp_path, cache_dir, **{"strategy.name": "toy"}))
    res = read_results(run_dir)
    fleet = json.loads((run_dir / "fleet.json").read_text())
    assert [r["participants"] for r in res] == [3, 3] and all(r["downlink_bytes"] > 0 for r in res)
    _, tensors = load_checkpoint(run_dir)
    rounds_with = {t: sum(any(fleet[d]["tier"] == t for d in r["participant_ids"]) for r in res) for t in tensors}
    for tier, sd in tensors.items():  # +0.25 in every round a device of the tier took part
        _, init = model_cache.adapted_model(str(tiny_zoo.paths[tier]), 8, True, "full")
        assert all(torch.allclose(sd[k] - init[k], torch.full_like(sd[k], 0.25 * rounds_with[tier]), atol=1e-5)
                   for k in sd), tier
    assert sum(rounds_with.values()) >= 2 and "acc" in res[-1]
    sys.modules.pop("toy_strategy", None)
    sys.modules.pop("toy_device", None)
