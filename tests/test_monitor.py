"""`slm monitor`'s refusals: bad settings, schedule, baseline, key variable, set names and an
unreachable server are one line each, before or instead of a round. The drift alert end to end
(a served embedded model, `slm monitor --once`, a loopback webhook) is in test_alerts.py, on the
gateway those tests already run."""

from __future__ import annotations

from pathlib import Path

import pytest

from alert_helpers import write_set


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    from slmkit.child_process import free_port
    from slmkit.errors import SlmError
    from slmkit.monitor.config import MonitorConfig
    from slmkit.monitor.drift import run_round

    evalset = tmp_path / "qa.jsonl"
    write_set(evalset)
    url = f"http://127.0.0.1:{free_port()}/v1"
    config = MonitorConfig(url=url, model="m", evals=[evalset], state=tmp_path / "s.json")
    with pytest.raises(SlmError) as info:
        run_round(config)
    assert str(info.value).startswith(
        "the served model answered no question of qa: upstream_error: The upstream serving `m` "
        "failed (unreachable"
    )
    assert "\n" not in str(info.value)
    assert not (tmp_path / "s.json").exists()  # no baseline from a failed round


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"threshold": 1.5}, "--threshold: Input should be less than 1"),
        ({"url": "localhost:8000"}, "--url: url must start with http:// or https://"),
        ({"evals": []}, "give an eval set (--eval SET) or a feedback audit log"),
        ({"since": "7d"}, "since applies to the feedback set: give --feedback-audit too"),
        ({"main_metric": "bleu"}, "--main-metric: Input should be 'fact_recall'"),
    ],
)
def test_bad_monitor_settings_are_one_line(values: dict, expected: str, tmp_path: Path) -> None:
    from slmkit.config import from_options
    from slmkit.errors import ConfigError
    from slmkit.monitor.commands import FLAGS
    from slmkit.monitor.config import MonitorConfig

    base = {"url": "http://127.0.0.1:9/v1", "model": "m", "evals": [tmp_path / "qa.jsonl"]}
    with pytest.raises(ConfigError) as info:
        from_options(MonitorConfig, {**base, **values}, FLAGS)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_bad_schedule_baseline_and_sets_are_refused_before_asking(tmp_path: Path) -> None:
    from slmkit.errors import SlmError
    from slmkit.monitor.commands import parse_every
    from slmkit.monitor.config import MonitorConfig
    from slmkit.monitor.drift import check_ready, eval_sets

    assert parse_every("30m") == 1800
    with pytest.raises(SlmError, match=r"^--every: 'soon' is not a duration"):
        parse_every("soon")
    evalset = tmp_path / "qa.jsonl"
    write_set(evalset)
    config = MonitorConfig(
        url="http://127.0.0.1:9/v1", model="m", evals=[evalset], baseline=str(tmp_path / "no.json")
    )
    with pytest.raises(SlmError, match=r"^--baseline .*no\.json: no such file"):
        check_ready(config)
    config = MonitorConfig(
        url="http://127.0.0.1:9/v1", model="m", evals=[evalset], api_key_env="NO_KEY_VAR_7"
    )
    with pytest.raises(
        SlmError, match="^--api-key-env: environment variable NO_KEY_VAR_7 is not set"
    ):
        check_ready(config)
    other = tmp_path / "b"
    other.mkdir()
    write_set(other / "qa.jsonl")
    twice = MonitorConfig(
        url="http://127.0.0.1:9/v1", model="m", evals=[evalset, other / "qa.jsonl"]
    )
    with pytest.raises(SlmError, match="two sets named qa"):
        eval_sets(twice, [])
