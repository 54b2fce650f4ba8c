"""The `monitor:` section of `slm serve`: the rounds of `slm monitor` run beside the gateway, in a
background task (each round in a worker thread, so requests never wait on it), through the
gateway's own OpenAI API on loopback; drift alerts go to the server's `alerting.webhook`.

The gateway knows nothing of it: `slm serve` reads serve.yaml as `MonitoredServeConfig`
(`serve_section.py`: the gateway's settings plus this section) and hands the gateway a
`ScheduledMonitor` to start and stop with it."""

from __future__ import annotations

import asyncio
import contextlib

from slmkit.console import info, warn
from slmkit.errors import SlmError
from slmkit.monitor.config import MonitorConfig
from slmkit.monitor.drift import MonitorRound, check_ready, run_round
from slmkit.monitor.serve_section import MonitoredServeConfig, ServeMonitor
from slmkit.serve.config import ServeConfig


def monitor_config(config: ServeConfig, section: ServeMonitor) -> MonitorConfig:
    """What `slm monitor` would be given to watch this server's model."""
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    shared = section.model_dump(exclude={"model", "feedback", "every_s"})
    return MonitorConfig(
        **shared,
        url=f"http://{host}:{config.port}/v1",
        model=section.model,
        feedback_audit=config.audit_target() if section.feedback else None,
        webhook=config.alerting.webhook,
    )


class ScheduledMonitor:
    """A round at start, then one every `every_s`; a failed round is a warning, not a stop."""

    def __init__(self, config: MonitorConfig, every_s: float) -> None:
        check_ready(config)  # a bad set, baseline or key variable stops the start
        self.config = config
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_serve(cls, config: MonitoredServeConfig) -> ScheduledMonitor | None:
        if config.monitor is None:
            return None
        return cls(monitor_config(config, config.monitor), config.monitor.every_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="drift-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _server_up(self) -> None:
        """The first round waits until the server answers /health (it binds after start-up)."""
        await _wait_for_health(self.config.url.removesuffix("/v1") + "/health", timeout_s=60.0)

    async def _run(self) -> None:
        await self._server_up()
        while True:
            try:
                result = await asyncio.to_thread(run_round, self.config)
            except SlmError as exc:
                warn(f"monitor round failed: {exc}")
            except Exception as exc:  # a bug in one round must not end the schedule
                warn(f"monitor round failed unexpectedly ({type(exc).__name__}: {exc})")
            else:
                info(summary(result))
            await asyncio.sleep(self.every_s)


async def _wait_for_health(url: str, timeout_s: float) -> None:
    import httpx

    deadline = asyncio.get_running_loop().time() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as client:
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.2)


def summary(result: MonitorRound) -> str:
    """One log line per round: each set's metric, value, baseline and status."""
    parts = []
    for s in result.sets:
        base = "-" if s.baseline is None else f"{s.baseline:.3f}"
        parts.append(f"{s.name} {s.metric} {s.value:.3f} (baseline {base}) {s.status}")
    return "monitor: " + ("; ".join(parts) if parts else "no set to evaluate")
