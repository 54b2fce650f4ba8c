"""What the gateway and its engines hold, read at each scrape of /metrics: the gateway process's
resident memory, each engine's child processes' (llama-server, vLLM), and per GPU its memory and
utilisation where `nvidia-smi` runs (engines on a GPU are separate processes, so the driver's view
is the one that sees them). In-process engines (transformers, ONNX) count in the gateway's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from slmkit.serve.engines.group import RestartHookGroup

GPU_QUERY = "index,memory.used,memory.total,utilization.gpu"
GPU_CACHE_S = 5.0  # scrapes closer together than this reuse the last reading
MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuReading:
    index: str
    used_bytes: float
    total_bytes: float
    utilization: float  # 0..1


def engine_process_ids(engine: Any) -> list[int]:
    """The live child processes behind an engine (its members' for a pool, split or alias)."""
    proc = getattr(engine, "proc", None)
    pids = [proc.pid] if proc is not None and proc.poll() is None else []
    if isinstance(engine, RestartHookGroup):
        for member in engine.hooked_members():
            pids += engine_process_ids(member)
    return pids


def resident_bytes(pids: Iterable[int]) -> float:
    """Summed resident memory of these processes and their children (0 for one that is gone)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            family = [process, *process.children(recursive=True)]
            total += sum(p.memory_info().rss for p in family)
        except psutil.Error:
            continue
    return total


def parse_nvidia_smi(text: str) -> list[GpuReading]:
    """`nvidia-smi --query-gpu=index,memory.used,memory.total,utilization.gpu
    --format=csv,noheader,nounits` output -> readings (rows it cannot read are left out)."""
    readings = []
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 4:
            continue
        try:
            used, total, busy = (float(c) for c in cells[1:])
        except ValueError:  # "[N/A]" on some boards
            continue
        readings.append(GpuReading(cells[0], used * MIB, total * MIB, busy / 100.0))
    return readings


class GpuReader:
    """nvidia-smi's view of the GPUs, at most every GPU_CACHE_S; nothing where it is not found."""

    def __init__(self, command: str | None = None) -> None:
        self.command = command or shutil.which("nvidia-smi")
        self._read_at = -GPU_CACHE_S
        self._last: list[GpuReading] = []

    def read(self) -> list[GpuReading]:
        if self.command is None:
            return []
        now = time.monotonic()
        if now - self._read_at < GPU_CACHE_S:
            return self._last
        self._read_at = now
        try:
            out = subprocess.run(
                [self.command, f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=2,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            self._last = []
            return []
        self._last = parse_nvidia_smi(out.stdout) if out.returncode == 0 else []
        return self._last


class ResourceCollector(Collector):
    """The resource gauges, computed when /metrics is scraped."""

    def __init__(self, engines: Callable[[], list[Any]], gpus: GpuReader | None = None) -> None:
        self.engines = engines
        self.gpus = gpus or GpuReader()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        own = GaugeMetricFamily(
            "slm_process_resident_bytes",
            "Resident memory of the gateway process (in-process engines included).",
        )
        own.add_metric([], _rss(_process(os.getpid())))
        yield own
        engines = GaugeMetricFamily(
            "slm_engine_resident_bytes",
            "Resident memory of an engine's child processes (llama-server, vLLM), by model.",
            labels=["model"],
        )
        for engine in self.engines():
            pids = engine_process_ids(engine)
            if pids:
                for model_id in engine.model_ids:
                    engines.add_metric([model_id], resident_bytes(pids))
        yield engines
        yield from self._gpu_families()

    def _gpu_families(self) -> Iterator[GaugeMetricFamily]:
        readings = self.gpus.read()
        used = GaugeMetricFamily(
            "slm_gpu_memory_used_bytes", "GPU memory in use (all processes).", labels=["gpu"]
        )
        total = GaugeMetricFamily("slm_gpu_memory_total_bytes", "GPU memory.", labels=["gpu"])
        busy = GaugeMetricFamily(
            "slm_gpu_utilization_ratio",
            "Share of the last sample period the GPU was busy (0-1).",
            labels=["gpu"],
        )
        for reading in readings:
            used.add_metric([reading.index], reading.used_bytes)
            total.add_metric([reading.index], reading.total_bytes)
            busy.add_metric([reading.index], reading.utilization)
        yield from (used, total, busy)


def _process(pid: int) -> Any:
    import psutil

    return psutil.Process(pid)


def _rss(process: Any) -> float:
    import psutil

    try:
        return float(process.memory_info().rss)
    except psutil.Error:
        return 0.0
