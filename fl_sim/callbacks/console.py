"""Console progress: one line per round, and at the end the run's gain over the source-only reference and
its link bytes."""

from __future__ import annotations

from fl_sim.callbacks import Callback


def round_line(rec: dict) -> str:
    acc = rec.get("acc", {})
    accs = " ".join(f"{d}={100 * v:.1f}" for d, v in acc.items())
    return (f"round {rec['round']:>3}  t={rec['virtual_time_s']:8.1f}s  devices={rec['participants']}"
            f"/{rec['sampled']} (stragglers {rec['stragglers']}, failed {rec['failed']})  "
            f"up={rec['cum_uplink_bytes'] / 1e6:.2f}MB down={rec['cum_downlink_bytes'] / 1e6:.2f}MB  "
            f"acc% {accs}  [{rec['wall_s']['round']:.1f}s]")


def summary_line(name: str, rec: dict) -> str | None:
    """The last evaluated round against the source-only reference, on every domain the fleet saw and
    overall, with the bytes sent each way (``None`` before any evaluation)."""
    acc, ref = rec.get("acc"), rec.get("source_only_acc")
    if not acc or not ref:
        return None
    gains = ", ".join(f"{d} {100 * acc[d]:.1f} % ({100 * (acc[d] - ref[d]):+.1f})" for d in acc if d in ref)
    return (f"{name} after round {rec['round']}: {gains} [points against source-only]; "
            f"uplink {rec['cum_uplink_bytes'] / 1e6:.3f} MB, downlink {rec['cum_downlink_bytes'] / 1e6:.3f} MB")


class ConsoleProgress(Callback):
    def __init__(self, summary: bool = True):
        self.summary, self.last = summary, None

    def after_round(self, strategy, record):
        rec = record.as_dict()
        print(round_line(rec), flush=True)
        if rec.get("acc"):
            self.last = rec

    def on_run_end(self, strategy, completed):
        if completed and self.summary and self.last is not None:
            line = summary_line(strategy.name, self.last)
            if line:
                print(line, flush=True)
