"""One monitoring round: ask the served model every question of each set through its OpenAI API,
score the answers with the evaluate package (`score_answer`, the main metric), compare each set's
main metric with its baseline, and fire (or resolve) a drift alert per set.

The baseline is the first round's scores, kept with the firing alerts in a state file under
`SLM_HOME/monitor/` (or an earlier state file given as `baseline`). A relative drop beyond the
threshold fires: a `ALERT drift:SET` log line and a webhook POST in the payload of the server's
alerts, whose message names the commands that turn the recent feedback into a retrain.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slmkit.config import env_secret
from slmkit.errors import ConfigError, SlmError
from slmkit.evaluate import scoring
from slmkit.evaluate.evalset import EvalItem, load_eval_set
from slmkit.evaluate.generate import Generation
from slmkit.monitor.config import MonitorConfig
from slmkit.paths import slm_home
from slmkit.serve.alerts import Alert, AlertStatus, alert_payload, log_change
from slmkit.state.sql import describe_target

SetStatus = Literal["baseline", "ok", "drift", "no baseline"]
FEEDBACK_SET = "feedback"


@dataclass
class SetScore:
    """One set's main metric this round, against its baseline."""

    name: str
    items: int
    metric: str
    value: float
    baseline: float | None
    errors: int
    status: SetStatus = "ok"

    @property
    def change(self) -> float | None:
        """Relative change from the baseline (-0.2 = 20% lower)."""
        if self.baseline is None or self.baseline <= 0:
            return None
        return (self.value - self.baseline) / self.baseline


@dataclass
class MonitorRound:
    at: float
    sets: list[SetScore]
    changes: list[dict[str, Any]] = field(default_factory=list)  # webhook payloads of this round
    state_path: Path | None = None
    notes: list[str] = field(default_factory=list)


def state_path(config: MonitorConfig) -> Path:
    if config.state is not None:
        return config.state
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in config.model)
    return slm_home() / "monitor" / f"{safe}.json"


def read_state(path: Path, option: str, must_exist: bool = False) -> dict[str, Any]:
    """A state file (baseline + firing alerts); `{}` when there is none yet."""
    if not path.is_file():
        if must_exist:
            raise ConfigError(f"{option} {path}: no such file (a state file of `slm monitor`)")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{option} {path}: not a monitor state file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("baseline", {}), dict):
        raise ConfigError(f"{option} {path}: not a monitor state file (no `baseline` mapping)")
    return data


def write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def eval_sets(config: MonitorConfig, notes: list[str]) -> list[tuple[str, list[EvalItem]]]:
    """Each named set with its items; the feedback set is built from the audit log (if any)."""
    sets = [(_set_name(path), load_eval_set(path)) for path in config.evals]
    names = [name for name, _ in sets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"--eval: two sets named {', '.join(dupes)}: give files distinct names")
    if config.feedback_audit is not None:
        items = _feedback_items(config)
        if items:
            sets.append((FEEDBACK_SET, items))
        else:
            notes.append("no approved or corrected answers in the feedback window: set skipped")
    return sets


def _set_name(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


def _feedback_items(config: MonitorConfig) -> list[EvalItem]:
    from slmkit.feedback.export import feedback_eval_rows
    from slmkit.serve.logs import parse_time

    assert config.feedback_audit is not None
    since = parse_time(config.since, "--since") if config.since is not None else None
    rows = feedback_eval_rows(config.feedback_audit, since, config.model)
    if not rows:
        return []
    path = state_path(config).with_suffix(".feedback.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return load_eval_set(path)


def api_key(config: MonitorConfig) -> str | None:
    """The server's API key from `--api-key-env`; ConfigError when that variable is unset."""
    return env_secret(config.api_key_env, "--api-key-env")


def ask_served(config: MonitorConfig, items: list[EvalItem]) -> list[Generation]:
    """The served model's temperature-0 answers, through its OpenAI API (never cached)."""
    return asyncio.run(_ask_all(config, items))


async def _ask_all(config: MonitorConfig, items: list[EvalItem]) -> list[Generation]:
    from slmkit.evaluate.config import EvalSettings
    from slmkit.evaluate.generate import _ask
    from slmkit.serve.engines.remote import RemoteEngine
    from slmkit.serve.engines.settings import UpstreamSettings

    upstream = UpstreamSettings(url=config.url, model=config.model, api_key_env=config.api_key_env)
    # tagged, so the gateway audits the probes apart from users' requests
    engine = RemoteEngine(config.model, upstream, api_key(config), {"X-SLM-Source": "monitor"})
    settings = EvalSettings(max_tokens=config.max_tokens, concurrency=config.concurrency)
    gate = asyncio.Semaphore(config.concurrency)

    async def one(item: EvalItem) -> Generation:
        async with gate:
            return await _ask(engine, config.model, item, settings)

    await engine.start()
    try:
        return list(await asyncio.gather(*(one(item) for item in items)))
    finally:
        await engine.stop()


def score_set(name: str, items: list[EvalItem], answers: list[Generation], wanted: str) -> SetScore:
    """The set's main metric over its answers (the metric `slm eval` would report)."""
    errors = [g.error for g in answers if g.error is not None]
    if len(errors) == len(answers):
        raise SlmError(f"the served model answered no question of {name}: {errors[0]}")
    scores = [scoring.score_answer(item, g.text) for item, g in zip(items, answers, strict=True)]
    metric = scoring.main_metric_for(items, wanted)
    value = scoring.mean_or_none(scoring.metric_values(scores, metric)) or 0.0
    return SetScore(name, len(items), metric, value, None, len(errors))


def check_ready(config: MonitorConfig) -> None:
    """What can be refused before any question is asked: keys, the baseline file, the sets."""
    from slmkit.serve.webhook import webhook_headers

    api_key(config)
    if config.webhook is not None:
        webhook_headers(config.webhook, "--webhook-bearer-env")
    if config.baseline != "auto":
        read_state(Path(config.baseline), "--baseline", must_exist=True)
    for path in config.evals:
        load_eval_set(path)


def run_round(config: MonitorConfig, now: float | None = None) -> MonitorRound:
    """Evaluate every set, compare with the baseline, send drift alert changes, save the state."""
    now = time.time() if now is None else now
    path = state_path(config)
    state = read_state(path, "--state")
    given = config.baseline != "auto"
    baseline = (
        read_state(Path(config.baseline), "--baseline", must_exist=True).get("baseline", {})
        if given
        else state.setdefault("baseline", {})
    )
    firing: dict[str, Any] = state.setdefault("firing", {})
    result = MonitorRound(at=now, sets=[], state_path=path)
    for name, items in eval_sets(config, result.notes):
        score = score_set(name, items, ask_served(config, items), config.main_metric)
        base = baseline.get(name)
        if base is not None and base.get("metric") != score.metric:
            result.notes.append(
                f"{name}: baseline measured {base.get('metric')}, not {score.metric}"
            )
            base = None
        if base is None and not given:
            baseline[name] = {
                "metric": score.metric,
                "value": score.value,
                "items": score.items,
                "at": now,
            }
            score.status = "baseline"
        elif base is None:
            score.status = "no baseline"
        else:
            score.baseline = float(base["value"])
            change = score.change
            score.status = "drift" if change is not None and -change > config.threshold else "ok"
            since = config.since or _day(float(base.get("at", now)))
            payload = _transition(config, score, firing, since, now)
            if payload is not None:
                result.changes.append(payload)
        result.sets.append(score)
    state.update(url=config.url, model=config.model, last_round=now)
    write_state(path, state)
    return result


def _transition(
    config: MonitorConfig, score: SetScore, firing: dict[str, Any], since: str, now: float
) -> dict[str, Any] | None:
    """Fire when a set drifts (and is not firing yet), resolve when it is back; the payload sent."""
    was = firing.get(score.name)
    if (score.status == "drift") == (was is not None):
        return None
    status: AlertStatus = "firing" if was is None else "resolved"
    alert = drift_alert(config, score, since, status)
    started_at = now if was is None else float(was["started_at"])
    payload = alert_payload(
        status,
        alert,
        started_at=started_at,
        ended_at=None if status == "firing" else now,
        server=_display(config.url),
    )
    log_change(status, alert)
    if config.webhook is not None and not _deliver(config, payload):
        return None  # not recorded: the next round tries again
    if status == "firing":
        firing[score.name] = {"started_at": now, "value": score.value}
    else:
        firing.pop(score.name, None)
    return payload


def drift_alert(config: MonitorConfig, score: SetScore, since: str, status: AlertStatus) -> Alert:
    """The drift alert of a set; a firing one names the commands of the retrain."""
    change = score.change or 0.0
    if status == "resolved":
        message = (
            f"{score.metric} on {score.name} is {score.value:.3f} (baseline {score.baseline:.3f}, "
            f"{change:+.0%}): back within the {config.threshold:.0%} threshold"
        )
    else:
        audit = (  # a URL's password is left out of the message
            f" --audit {describe_target(config.feedback_audit)}"
            if config.feedback_audit is not None
            else ""
        )
        message = (
            f"{score.metric} on {score.name} is {score.value:.3f}, {-change:.0%} below its "
            f"baseline {score.baseline:.3f} (threshold {config.threshold:.0%}). Retrain on recent feedback: "
            f"slm feedback export --since {since} --model {config.model}{audit} --to sft "
            "-o feedback.jsonl, add feedback.jsonl to data.train of your recipe, "
            "then slm run RECIPE"
        )
    return Alert(
        f"drift:{score.name}", message, "drift", score.value, config.threshold, config.model
    )


def _deliver(config: MonitorConfig, payload: dict[str, Any]) -> bool:
    from slmkit.serve.webhook import WebhookSender

    assert config.webhook is not None
    sender = WebhookSender(config.webhook, field="--webhook-bearer-env")
    return asyncio.run(sender.deliver(payload))


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d")


def _display(url: str) -> str:
    from slmkit.serve.engines.remote import display_url

    return display_url(url)
