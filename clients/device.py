"""The Flower ClientApp: one virtual node emulates one device (its profile comes from the server).

Messages it handles:

``query``  reply with the device id this node emulates (``partition-id`` in the node config), so the
           server can map Flower node ids to devices; with ``warm`` (ConfigRecord ``configs``: a JSON list
           of device configs) the worker first loads what those devices need, once per process.
``train``  content ``config`` (ConfigRecord: the device's round settings) and optionally ``adapter``
           (ArrayRecord: the adapter state to run). Replies ``metrics`` (MetricRecord) and, if the
           device adapted, ``adapter`` (its new adapter state).
           With ``config["mode"] == "cdcca"`` the downlink is the record ``dwc_full`` (a dense refresh) or
           ``config["dwc_chain"]`` (the list of DWC payloads to apply in order, each ``bytes``) and the
           reply carries ``upload`` (ConfigRecord: the UTS upload arrays packed into one
           ``bytes`` value, ``"packed"``; see ``fl_sim.wire.pack_arrays``) instead of an adapter.

Per-device state lives on the server side (adapters are shared per tier and version), so
``Context.state`` stays empty; base models are cached per worker process by tier.
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()  # heavy imports (torch, transformers) happen on the first message needing them, not at load


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Which device this node emulates. A ``warm`` config (JSON list of device configs) in the query
    also makes this worker process load what those devices need (``clients.local.warm_up``), once."""
    if "warm" in msg.content:
        import json

        import torch

        from clients.local import warm_up

        try:  # best effort: a device that cannot load fails in its round, where it is counted
            cfgs = json.loads(str(msg.content["warm"]["configs"]))
            torch.set_num_threads(int(cfgs[0].get("threads", 1)) if cfgs else 1)
            warm_up(cfgs)
        except Exception as exc:  # noqa: BLE001
            logging.getLogger(__name__).warning("worker warm-up failed: %s", exc)
    return Message(RecordDict({"device": ConfigRecord({"device_id": int(context.node_config["partition-id"])})}),
                   reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    import torch

    from clients.local import run_device_round
    from fl_sim.wire import from_array_record, to_array_record

    cfg = dict(msg.content["config"])
    torch.set_num_threads(int(cfg.get("threads", 1)))
    if cfg.get("mode") == "cdcca":
        return _cdcca(msg, cfg)
    adapter = from_array_record(msg.content["adapter"]) if "adapter" in msg.content else None
    new_state, metrics = run_device_round(cfg, adapter)
    content = RecordDict({"metrics": MetricRecord({k: float(v) for k, v in metrics.items()})})
    if new_state is not None:
        content["adapter"] = to_array_record(new_state)
    return Message(content, reply_to=msg)


def _cdcca(msg: Message, cfg: dict) -> Message:
    from clients.local import run_cdcca_round
    from fl_sim.wire import packed_record, record_values

    downlink = None  # raw values; run_cdcca_round validates them (a bad downlink is rejected, not fatal)
    if "dwc_full" in msg.content:
        downlink = {"full": record_values(msg.content["dwc_full"])}
    elif "dwc_chain" in cfg:
        downlink = {"chain": {"payloads": cfg.pop("dwc_chain")}}
    upload, metrics, reason = run_cdcca_round(cfg, downlink)
    content = RecordDict({"metrics": MetricRecord({k: float(v) for k, v in metrics.items()}),
                          "upload": packed_record(upload)})
    if reason:
        content["status"] = ConfigRecord({"downlink_error": reason})
    return Message(content, reply_to=msg)
