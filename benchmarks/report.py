"""Write one benchmark's results into its own section of docs/benchmarks.md.

Each benchmark owns the block between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`,
so benchmarks run separately never overwrite each other's numbers.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nWritten by `make bench` (each script in `benchmarks/` owns one section). Ratios compare against a baseline measured in the same run on the same machine.\n"


def machine_line() -> str:
    """A one-line description of where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {dt.date.today().isoformat()}"


def write_section(name: str, markdown: str, doc: Path = DOC) -> None:
    """Replace (or append) the section `name` of docs/benchmarks.md with `markdown`."""
    text = doc.read_text() if doc.exists() else HEADER
    block = f"<!-- bench:{name} -->\n{markdown.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S
    )
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def finish(name: str, results: dict[str, Any], summarize: Callable[[dict[str, Any]], str]) -> None:
    """Keep the raw numbers in reports/bench_NAME.json (not committed), print the summary and
    write it into the section `name` of docs/benchmarks.md."""
    raw = DOC.parents[1] / "reports" / f"bench_{name}.json"
    raw.parent.mkdir(exist_ok=True)
    raw.write_text(json.dumps(results, indent=2))
    markdown = summarize(results)
    print(markdown)
    write_section(name, markdown)
