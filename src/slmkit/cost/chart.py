"""The cost chart: monthly cost vs requests/day for API, self-hosted and hybrid (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from slmkit.cost.model import CostResult


def volumes(result: CostResult, points: int = 400) -> list[float]:
    """Requests/day from 0 to past the profile and the break-even, with both sides of each step."""
    model = result.model
    top = 2 * max(result.requests_per_day, result.break_even_requests_per_day or 0.0)
    grid = [top * i / points for i in range(points + 1)]
    per_machine = model.requests_per_day_per_machine
    for share in (1.0, model.local_share):  # where self-hosted and hybrid add a machine
        if share <= 0:
            continue
        k = 1
        while k * per_machine / share < top and k < 200:
            edge = k * per_machine / share
            grid += [edge, edge * (1 + 1e-9)]
            k += 1
    return sorted(set(grid))


def write_cost_chart(result: CostResult, path: Path) -> Path:
    """cost.png: three curves, the profile's volume and the break-even volume marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = result.model
    xs = volumes(result)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(xs, [model.api(x) for x in xs], label="API only")
    ax.plot(xs, [model.self_hosted(x) for x in xs], label="self-hosted")
    ax.plot(xs, [model.hybrid(x) for x in xs], label=f"hybrid ({model.local_share:.0%} local)")
    ax.axvline(result.requests_per_day, color="grey", linestyle=":", label="this profile")
    if result.break_even_requests_per_day is not None:
        x = result.break_even_requests_per_day
        ax.axvline(x, color="black", linestyle="--", label=f"break-even {x:,.0f}/day")
    ax.set_xlabel("requests per day")
    ax.set_ylabel("cost per month")
    ax.set_xlim(0, xs[-1])
    ax.set_ylim(bottom=0)
    ax.set_title("Monthly cost by volume", loc="left")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
