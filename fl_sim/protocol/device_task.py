"""What the server sends one device in one round, and how it travels.

A ``DeviceTask`` names the device behaviour to run (its module, e.g. ``clients.local_training``), the round, and that
behaviour's settings (its ``Settings`` model, validated again on the device). It travels as one JSON
string in the message's ``"task"`` ConfigRecord; the downlink payload a strategy sends (adapter
weights, DWC payloads) travels beside it in the same message. Everything in the message is counted as
downlink bytes but one record added after counting, ``emulate``: which device the receiving Flower node
emulates (a real device knows who it is). Other simulation plumbing is in ``fl_sim.device.environment``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

RECORD = "task"
EMULATE = "emulate"  # ConfigRecord {"device_id"}: the device the receiving node emulates (plumbing, not counted)


class DeviceTask(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    behaviour: str = Field(description="device behaviour: its registered name, the dotted name of its module")
    round: int = Field(ge=1)
    settings: dict[str, Any] = Field(description="the behaviour's Settings, as JSON values")


def task_record(task: DeviceTask, values: dict | None = None):
    """The ``"task"`` ConfigRecord: the task as JSON, plus ``values`` (extra entries such as ``bytes``
    payloads: an entry in an existing record costs about 20 bytes of framing, a record of its own 150)."""
    from flwr.app import ConfigRecord

    return ConfigRecord({RECORD: task.model_dump_json()} | (values or {}))


def read_task(content) -> tuple[DeviceTask, dict]:
    """``(task, the record's other entries)`` of a received message's content."""
    record = dict(content[RECORD])
    return DeviceTask.model_validate_json(str(record.pop(RECORD))), record


@dataclass
class Downlink:
    """What a device receives beside its task: records of the message, and values added to the task record
    (Flower frames each record of a message with about 150 bytes; a value in an existing record costs about 20)."""
    records: dict = field(default_factory=dict)  # name -> Flower record
    task_values: dict = field(default_factory=dict)  # name -> value, in the task record
