"""The `monitor:` section of serve.yaml, and serve.yaml itself as `slm serve` reads it: the gateway's
settings (`serve/config.py`, which knows nothing of monitoring) composed with this section.
Light to import: the rounds themselves are in `scheduled.py`."""

from __future__ import annotations

from pydantic import Field, model_validator

from slmkit.monitor.settings import MonitorSettings
from slmkit.serve.config import ServeConfig


class ServeMonitor(MonitorSettings):
    """`slm monitor` run by the server itself: a round at start, then every `every_s`, on one of
    its models, through its own API; drift alerts go to `alerting.webhook`."""

    model: str = Field(description="Served model (or route) id to re-evaluate.")
    feedback: bool = Field(
        default=False,
        description="Also evaluate on the feedback set built from this server's audit log "
        "(needs `audit.log_text: true`).",
    )
    every_s: float = Field(
        default=3600.0, gt=0, description="Seconds between two rounds; the first runs at start."
    )

    @model_validator(mode="after")
    def _something_to_evaluate(self) -> ServeMonitor:
        if not self.evals and not self.feedback:
            raise ValueError("give eval sets (`evals`) or `feedback: true`")
        return self


class MonitoredServeConfig(ServeConfig):
    """serve.yaml: the gateway's settings and the `monitor:` section run beside it."""

    monitor: ServeMonitor | None = Field(
        default=None,
        description="Re-evaluate a served model on a schedule (drift alerts, as `slm monitor`).",
    )
