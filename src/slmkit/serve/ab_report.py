"""`slm logs ab MODEL`: the versions of an A/B split compared from the audit log.

Per version: requests, errors, p50/p95 latency, feedback rate (rated / requests), thumbs-up share
with a 95% Wilson interval, and escalation rate (a route escalated the version's answer). Each
version is compared with the first (the baseline): a two-proportion z-test on the thumbs-up share,
a Mann-Whitney U test on latency (normal approximation with tie correction), and when the
difference is not significant, the rated answers per version a 10-point difference would need
(two-sided alpha 0.05, power 0.8).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from slmkit.errors import SlmError
from slmkit.serve.alerts import is_failure
from slmkit.serve.audit_schema import reading, user_traffic
from slmkit.serve.logs import HINT, Db, percentile
from slmkit.state.sql import query

Z_95 = 1.959964  # two-sided 95%
Z_POWER = 0.841621  # one-sided 80% power
ALPHA = 0.05
DETECT = 0.10  # the difference in thumbs-up share the power calculation is for


@dataclass
class VersionStats:
    version: str
    requests: int = 0
    errors: int = 0  # status >= 500 or 429
    rated: int = 0  # requests with feedback (the latest rating counts)
    thumbs_up: int = 0
    escalated: int = 0  # a route's check sent the answer elsewhere
    latency_p50: float | None = None
    latency_p95: float | None = None
    latencies: list[float] = field(default_factory=list, repr=False)  # of answered requests

    @property
    def feedback_rate(self) -> float | None:
        return self.rated / self.requests if self.requests else None

    @property
    def thumbs_up_share(self) -> float | None:
        return self.thumbs_up / self.rated if self.rated else None

    @property
    def thumbs_up_ci(self) -> tuple[float, float] | None:
        return wilson_interval(self.thumbs_up, self.rated)

    @property
    def escalation_rate(self) -> float | None:
        return self.escalated / self.requests if self.requests else None

    def as_dict(self) -> dict[str, Any]:
        ci = self.thumbs_up_ci
        return {
            "version": self.version,
            "requests": self.requests,
            "errors": self.errors,
            "latency_p50": self.latency_p50,
            "latency_p95": self.latency_p95,
            "rated": self.rated,
            "feedback_rate": self.feedback_rate,
            "thumbs_up": self.thumbs_up,
            "thumbs_up_share": self.thumbs_up_share,
            "thumbs_up_ci95": list(ci) if ci else None,
            "escalated": self.escalated,
            "escalation_rate": self.escalation_rate,
        }


@dataclass
class Comparison:
    """One version against the baseline."""

    baseline: str
    version: str
    p_value: float | None  # thumbs-up share, two-proportion z-test
    difference: float | None  # thumbs-up share: version - baseline
    latency_p_value: float | None  # Mann-Whitney U
    more_rated_needed: int | None  # per version, to detect a DETECT difference
    verdict: str


@dataclass
class AbReport:
    model: str
    since: float | None
    versions: list[VersionStats]
    comparisons: list[Comparison]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "since": self.since,
            "versions": [v.as_dict() for v in self.versions],
            "comparisons": [c.__dict__ for c in self.comparisons],
        }


# -- statistics --------------------------------------------------------------------------------
def normal_sf2(z: float) -> float:
    """Two-sided p-value of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2))


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion; None without observations."""
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_p(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test; None when it cannot be computed."""
    if n1 == 0 or n2 == 0:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0  # all up or all down on both sides: no evidence of a difference
    return normal_sf2((x2 / n2 - x1 / n1) / se)


def sample_size(p1: float, difference: float = DETECT) -> int:
    """Rated answers per version for a two-sided 5% test to detect `difference` with 80% power."""
    p2 = p1 + difference if p1 + difference <= 1 else p1 - difference
    mean = (p1 + p2) / 2
    a = Z_95 * math.sqrt(2 * mean * (1 - mean))
    b = Z_POWER * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(((a + b) / difference) ** 2)


def mann_whitney_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation, tie-corrected)."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return None
    pooled = sorted([(x, 0) for x in a] + [(x, 1) for x in b])
    rank_sum_a = 0.0
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        mid_rank = (i + j) / 2 + 1
        rank_sum_a += mid_rank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 0)
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    u = rank_sum_a - n1 * (n1 + 1) / 2
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return 1.0
    return normal_sf2((u - n1 * n2 / 2) / math.sqrt(variance))


def compare(base: VersionStats, other: VersionStats) -> Comparison:
    p = two_proportion_p(base.thumbs_up, base.rated, other.thumbs_up, other.rated)
    latency_p = mann_whitney_p(base.latencies, other.latencies)
    share_a, share_b = base.thumbs_up_share, other.thumbs_up_share
    difference = share_b - share_a if share_a is not None and share_b is not None else None
    if p is None or difference is None:
        unrated = base.version if base.rated == 0 else other.version
        verdict = f"no rated answers for {unrated} yet: no comparison of thumbs-up share"
        return Comparison(base.version, other.version, None, None, latency_p, None, verdict)
    if p < ALPHA:
        word = "better" if difference > 0 else "worse"
        verdict = f"{other.version} {word} than {base.version} (p={p:.2g})"
        return Comparison(base.version, other.version, p, difference, latency_p, None, verdict)
    pooled = (base.thumbs_up + other.thumbs_up) / (base.rated + other.rated)
    more = max(0, sample_size(pooled) - min(base.rated, other.rated))
    verdict = (
        f"no significant difference yet (p={p:.2g}); about {more} more rated answers per "
        f"version would detect a {DETECT * 100:.0f}-point difference"
    )
    return Comparison(base.version, other.version, p, difference, latency_p, more, verdict)


# -- the audit log ---------------------------------------------------------------------------
def _rows(db: Db, model: str, since: float) -> tuple[list[dict[str, Any]], dict[str, int]]:
    with reading(db, HINT) as conn:
        rows = query(
            conn,
            "SELECT id, status, latency_s, version, model, served_by, route, route_reason "
            f"FROM requests WHERE ts >= ? AND version IS NOT NULL AND {user_traffic(conn)} "
            "AND (model = ? OR served_by = ? "
            "OR route_reason LIKE 'escalated%' OR route_reason LIKE 'fallback%') ORDER BY ts",
            (since, model, model),
        )
        ratings = {  # the latest rating of each request
            row["request_id"]: row["rating"]
            for row in query(
                conn,
                "SELECT f.request_id, f.rating FROM feedback f JOIN requests r "
                f"ON r.id = f.request_id WHERE r.ts >= ? AND r.version IS NOT NULL "
                f"ORDER BY f.ts, f.{conn.rowid}",
                (since,),
            )
        }
    return rows, ratings


def _moved_on(row: Mapping[str, Any]) -> bool:
    """A route passed the request on (escalated or fell back): the version is an earlier member's."""
    return (row["route_reason"] or "").startswith(("escalated", "fallback"))


def _answered_by(row: Mapping[str, Any], model: str) -> bool:
    return row["model"] == model or (row["served_by"] == model and not _moved_on(row))


def ab_report(
    db: Db, model: str, since: float | None = None, order: list[str] | None = None
) -> AbReport:
    """The versions of `model` over the audit rows since `since` (epoch s; None: all), in the
    order given (the split's arms; the first is the baseline), others after by name."""
    rows, ratings = _rows(db, model, since or 0.0)
    own = {r["version"] for r in rows if _answered_by(r, model)}
    stats: dict[str, VersionStats] = {}
    for row in rows:
        version = row["version"]
        if not (_answered_by(row, model) or (_moved_on(row) and version in own)):
            continue  # a route moved another model's answer on
        s = stats.setdefault(version, VersionStats(version))
        s.requests += 1
        s.errors += int(is_failure(row["status"]))
        s.escalated += int((row["route_reason"] or "").startswith("escalated"))
        if row["status"] == 200 and row["latency_s"] is not None:
            s.latencies.append(row["latency_s"])
        rating = ratings.get(row["id"])
        if rating is not None:
            s.rated += 1
            s.thumbs_up += int(rating > 0)
    if not stats:
        raise SlmError(
            f"--ab: no answers of {model!r} with a version in the audit log"
            + (" over that time" if since else ""),
            hint="serve it as an A/B split (`ab:` in the model entry) and send it requests",
        )
    for s in stats.values():
        s.latency_p50, s.latency_p95 = percentile(s.latencies, 50), percentile(s.latencies, 95)
    rank = {name: i for i, name in enumerate(order or [])}
    versions = sorted(stats.values(), key=lambda s: (rank.get(s.version, len(rank)), s.version))
    comparisons = [compare(versions[0], other) for other in versions[1:]]
    return AbReport(model, since, versions, comparisons)
