"""Resource gauges of /metrics: the gateway's memory, its engines' processes, and the GPUs as
nvidia-smi reports them (the llama-server case is checked in test_serve_api on a real engine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# nvidia-smi --query-gpu=index,memory.used,memory.total,utilization.gpu --format=csv,noheader,nounits
# on a two-GPU machine, one of them an older board that reports N/A
NVIDIA_SMI = "0, 3517, 81559, 37\n1, [N/A], 16384, [N/A]\n"


def test_nvidia_smi_rows_become_readings() -> None:
    from slmkit.serve.resources import MIB, parse_nvidia_smi

    (first,) = parse_nvidia_smi(NVIDIA_SMI)
    assert first.index == "0" and first.used_bytes == 3517 * MIB
    assert first.total_bytes == 81559 * MIB and first.utilization == pytest.approx(0.37)
    assert parse_nvidia_smi("") == [] and parse_nvidia_smi("garbage") == []


def test_the_gauges_of_a_machine_with_a_gpu(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from slmkit.serve.resources import GpuReader, ResourceCollector

    # this machine has no GPU: a stand-in for nvidia-smi prints what a real one printed
    tool = tmp_path / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\nprintf '{NVIDIA_SMI}'\n")
    tool.chmod(0o755)
    registry = CollectorRegistry()
    registry.register(ResourceCollector(lambda: [], GpuReader(str(tool))))
    text = generate_latest(registry).decode()
    assert 'slm_gpu_memory_used_bytes{gpu="0"} 3.687841792e+09' in text
    assert 'slm_gpu_utilization_ratio{gpu="0"} 0.37' in text
    assert 'gpu="1"' not in text  # its N/A row is left out


def test_without_nvidia_smi_the_gpu_families_are_declared_and_empty() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from slmkit.serve.resources import GpuReader, ResourceCollector

    registry = CollectorRegistry()
    reader = GpuReader()
    reader.command = None  # as on a machine without the driver
    registry.register(ResourceCollector(lambda: [], reader))
    text = generate_latest(registry).decode()
    assert "# TYPE slm_gpu_memory_used_bytes gauge" in text
    assert "slm_gpu_memory_used_bytes{" not in text
    own = next(line for line in text.splitlines() if line.startswith("slm_process_resident_bytes "))
    import psutil

    rss = psutil.Process().memory_info().rss
    assert float(own.split()[1]) == pytest.approx(rss, rel=0.2)


def test_engine_processes_are_found_through_pools() -> None:
    from slmkit.serve.engines.group import RestartHookGroup
    from slmkit.serve.resources import engine_process_ids, resident_bytes

    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(40 << 20); time.sleep(30)"])  # fmt: skip
    try:

        class Child:
            proc = child

        class Pool(RestartHookGroup):
            def hooked_members(self):
                return [Child(), object()]  # an in-process member has no process

        import time

        time.sleep(1.0)
        assert engine_process_ids(Pool()) == [child.pid]
        assert resident_bytes([child.pid]) > 40 << 20
        assert resident_bytes([os.getpid() + 10_000_000]) == 0.0  # gone: nothing
    finally:
        child.kill()
        child.wait()
    assert engine_process_ids(Child()) == []


@pytest.mark.gpu
def test_a_real_gpu_is_read() -> None:
    from slmkit.serve.resources import GpuReader

    readings = GpuReader().read()
    assert readings and all(r.total_bytes > 1e9 and 0 <= r.utilization <= 1 for r in readings)
