"""Monitor: point the board at a running `slm serve` (URL + API key) and watch requests/s, error
rate, p50/p95/p99 latency, tokens/s and in-flight requests over time (polled from its /metrics,
kept per browser session), the alerts that fire, and the latest requests from its audit log."""

from __future__ import annotations

import copy
from typing import Any

from slmkit.serve.config import AuditSettings
from slmkit.ui.charts import titled_line_plot
from slmkit.ui.context import Board
from slmkit.ui.messages import error_html, error_line, status_html
from slmkit.ui.monitor_view import (
    REQUEST_COLUMNS,
    MonitorSession,
    alerts_html,
    audit_view,
    poll,
    series_frames,
    summary_html,
)

POLL_S = 2.0
DEFAULT_URL = "http://127.0.0.1:8000"


def _plot(label: str, y_title: str, elem_id: str, key: str, **kwargs: Any) -> Any:
    """A time-series plot (x: seconds since Watch), its series known from the start."""
    import gradio as gr

    with gr.Column():  # in the tab's rows, the title stays above its plot instead of beside it
        return titled_line_plot(
            label,
            series_frames([], None)[key],
            "seconds",
            "value",
            x_title="seconds since Watch",
            y_title=y_title,
            height=250,
            elem_id=elem_id,
            **{"y_lim": [0, None], **kwargs},
        )


def view(session: MonitorSession, status: str) -> tuple[Any, ...]:
    """Every output of the tab for the session's current state (status first)."""
    frames = series_frames(session.points, session.first_ts)
    firing = session.last.firing if session.last is not None else []
    if session.audit_db:
        try:
            audit = audit_view(session.audit_db)
            audit_line, rows, audit_alerts = status_html(audit.line), audit.rows, audit.alerts
        except Exception as exc:
            audit_line, rows, audit_alerts = error_html(exc), [], []
    else:
        audit_line, rows, audit_alerts = status_html("no audit log given"), [], []
    return (
        status,
        session,
        summary_html(session),
        alerts_html(firing, audit_alerts),
        frames["rps"],
        frames["tps"],
        frames["fly"],
        frames["lat"],
        frames["err"],
        audit_line,
        rows,
    )


def build(board: Board) -> None:
    import gradio as gr

    url, key, db = _target()
    with gr.Row():
        connect = gr.Button("Watch", variant="primary", scale=0, elem_id="monitor-connect")
        stop = gr.Button("Stop", scale=0, elem_id="monitor-stop")
        status = gr.HTML(
            status_html(f"give the URL of a running `slm serve`; it is polled every {POLL_S:g} s"),
            elem_id="monitor-status",
        )
    session = gr.State(MonitorSession())
    summary = gr.HTML(elem_id="monitor-summary")
    alerts = gr.HTML(elem_id="monitor-alerts")
    charts = _charts()
    gr.Markdown("#### Latest requests (audit log)")
    audit_line = gr.HTML(elem_id="monitor-audit-status")
    table = gr.Dataframe(
        headers=REQUEST_COLUMNS, interactive=False, wrap=True, elem_id="monitor-requests"
    )
    timer = gr.Timer(POLL_S, active=False)
    outputs = [status, session, summary, alerts, *charts, audit_line, table]

    def watch(url_: str, key_: str, db_: str) -> tuple[Any, ...]:
        fresh = MonitorSession(url=url_, api_key=key_.strip(), audit_db=db_.strip())
        try:
            poll(fresh)
        except Exception as exc:
            return (error_html(exc), *[gr.skip()] * (len(outputs) - 1), gr.Timer(active=False))
        line = status_html(f"watching {url_.strip()} (every {POLL_S:g} s)", "ok")
        return (*view(fresh, line), gr.Timer(active=True))

    def tick(current: MonitorSession) -> tuple[Any, ...]:
        if current.last is None:
            return tuple(gr.skip() for _ in outputs)
        current = copy.deepcopy(current)
        try:
            poll(current)
        except Exception as exc:
            line = f"{error_line(exc)} (still trying every {POLL_S:g} s)"
            return view(current, status_html(line, "error"))
        return view(current, status_html(f"watching {current.url} (every {POLL_S:g} s)", "ok"))

    connect.click(watch, inputs=[url, key, db], outputs=[*outputs, timer])
    url.submit(watch, inputs=[url, key, db], outputs=[*outputs, timer])
    stop.click(lambda: (status_html("stopped"), gr.Timer(active=False)), outputs=[status, timer])
    timer.tick(tick, inputs=[session], outputs=outputs, show_progress="hidden")


def _target() -> tuple[Any, Any, Any]:
    """The gateway to watch: its URL, API key and audit log."""
    import gradio as gr

    default_db = str(AuditSettings().db_path())
    with gr.Row():
        url = gr.Textbox(
            value=DEFAULT_URL,
            label="gateway URL (`slm serve`)",
            scale=3,
            max_lines=1,
            elem_id="monitor-url",
        )
        key = gr.Textbox(
            label="API key (if it has one)",
            type="password",
            scale=2,
            max_lines=1,
            elem_id="monitor-key",
        )
        db = gr.Textbox(
            value=default_db,
            label="its audit log (`slm logs --db`; on this machine)",
            scale=4,
            max_lines=1,
            elem_id="monitor-db",
        )
    return url, key, db


def _charts() -> list[Any]:
    """requests/s, tokens/s, in flight, latency quantiles, error rate (in `view`'s order)."""
    import gradio as gr

    with gr.Row():
        rps = _plot("requests/s", "requests/s", "monitor-rps", "rps")
        tps = _plot("output tokens/s", "tokens/s", "monitor-tps", "tps")
        fly = _plot("requests in flight", "requests", "monitor-inflight", "fly")
    with gr.Row():
        lat = _plot("latency p50 / p95 / p99", "ms", "monitor-latency", "lat")
        err = _plot("error rate (5xx and 429)", "%", "monitor-errors", "err", y_lim=[0, 100])
    return [rps, tps, fly, lat, err]
