"""CLI: `slm cost`. Thin: parse, call the stage, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from slmkit.config import from_options, option
from slmkit.console import out, result_line
from slmkit.cost.config import CostConfig
from slmkit.cost.model import CostResult

FROM_AUDIT = "Measured from --audit-db unless given."


def cost_cmd(
    requests_per_day: float | None = option(
        CostConfig, "requests_per_day", from_config=True, extra_help=FROM_AUDIT
    ),
    prompt_tokens: float | None = option(
        CostConfig, "prompt_tokens", from_config=True, extra_help=FROM_AUDIT
    ),
    completion_tokens: float | None = option(
        CostConfig, "completion_tokens", from_config=True, extra_help=FROM_AUDIT
    ),
    peak_concurrency: int | None = option(
        CostConfig, "peak_concurrency", from_config=True, extra_help=FROM_AUDIT
    ),
    latency_target: float = option(CostConfig, "latency_target"),
    input_price: float | None = option(CostConfig, "input_price", from_config=True),
    output_price: float | None = option(CostConfig, "output_price", from_config=True),
    machine_price: float | None = option(CostConfig, "machine_price", from_config=True),
    bench: Path | None = option(CostConfig, "bench"),
    tokens_per_s: float | None = option(CostConfig, "tokens_per_s"),
    requests_per_s: float | None = option(CostConfig, "requests_per_s"),
    machine_concurrency: int | None = option(CostConfig, "machine_concurrency"),
    machine_latency: float | None = option(CostConfig, "machine_latency"),
    local_share: float | None = option(CostConfig, "local_share", from_config=True),
    audit_db: str | None = option(CostConfig, "audit_db", metavar="FILE|URL"),
    window_days: float = option(CostConfig, "window_days"),
    days_per_month: float = option(CostConfig, "days_per_month"),
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Folder for cost.png (the chart) and cost.json."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Monthly cost of an upstream API vs self-hosting this model vs a hybrid split; break-even volume."""
    from slmkit.cost.chart import write_cost_chart
    from slmkit.cost.model import estimate_cost

    values = {k: v for k, v in locals().items() if k in CostConfig.model_fields and v is not None}
    result = estimate_cost(from_options(CostConfig, values))
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        (output / "cost.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        write_cost_chart(result, output / "cost.png")
    if as_json:
        result_line(json.dumps(result.to_dict(), indent=2))
        return
    print_result(result)
    if output is not None:
        out.print(f"chart: {output / 'cost.png'}", markup=False, soft_wrap=True)


def _money(value: float) -> str:
    return f"{value:,.2f}"


def print_result(result: CostResult) -> None:
    from rich.table import Table

    m = result.model
    share = m.local_share
    table = Table("option", "machines", "cost / month", "cost / 1k requests")
    per_k = 1000 / (result.requests_per_day * m.days_per_month)
    for name, machines, cost in (
        ("API only", "-", result.api_monthly),
        ("self-hosted", str(result.machines), result.self_hosted_monthly),
        (f"hybrid ({share:.0%} local)", str(result.machines_hybrid), result.hybrid_monthly),
    ):
        table.add_row(name, machines, _money(cost), _money(cost * per_k))
    out.print(table)
    for line in _summary(result):
        out.print(line, markup=False, soft_wrap=True)


def _summary(result: CostResult) -> list[str]:
    m, t = result.model, result.throughput
    src = result.profile_source
    lines = [
        f"profile: {result.requests_per_day:,.0f} requests/day ({src['requests_per_day']}), "
        f"{m.prompt_tokens:,.0f} prompt + {m.completion_tokens:,.0f} completion tokens "
        f"({src['prompt_tokens']}/{src['completion_tokens']}), peak {result.peak_concurrency} "
        f"concurrent ({src['peak_concurrency']})",
        f"machine: {t.tokens_per_s:,.1f} tokens/s at {t.concurrency} concurrent ({t.source}) "
        f"-> {m.machine_rps:.3f} requests/s, up to {m.requests_per_day_per_machine:,.0f} requests/day",
        f"latency: {_latency(result)}",
    ]
    if result.audit is not None:
        a = result.audit
        lines.append(
            f"audit log: {a.requests} answered requests in the last {a.window_days:g} days of {a.db}"
        )
    be = result.break_even_requests_per_day
    lines.append(f"break-even: {be:,.0f} requests/day" if be is not None else _never(result))
    lines.append(f"cheapest: {result.cheapest}")
    lines += [f"note: {n}" for n in result.notes]
    return lines


def _latency(result: CostResult) -> str:
    if result.latency_s is None:
        return f"not checked (target {result.latency_target:g} s)"
    verdict = "meets" if result.meets_latency else "MISSES"
    return f"~{result.latency_s:.2f} s p95 per request, {verdict} the {result.latency_target:g} s target"


def _never(result: CostResult) -> str:
    m = result.model
    full = m.requests_per_day_per_machine * m.days_per_month * m.api_cost_per_request
    return (
        f"break-even: none - a fully loaded machine costs {_money(m.machine_month)}/month, "
        f"the API {_money(full)} for the same traffic"
    )


def register(app: typer.Typer) -> None:
    app.command("cost")(cost_cmd)
