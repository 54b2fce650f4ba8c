"""Data frames for the board's plots (Gradio plots take long-format pandas frames)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slmkit.train.run_index import loss_points


def loss_frame(run_dirs: Sequence[Path | str]) -> Any:
    """step/loss/series rows of one run (series: train, validation) or several (series: run + kind)."""

    rows: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        for point in loss_points(run_dir):
            series = point["series"] if len(run_dirs) == 1 else f"{point['run']} {point['series']}"
            rows.append({"step": float(point["step"]), "loss": point["loss"], "series": series})
    return typed_frame(rows, {"step": float, "loss": float, "series": object})


def typed_frame(rows: list[dict[str, Any]], columns: dict[str, Any]) -> Any:
    """A frame with fixed column types, also when empty (untyped object columns make a plot's axes
    categorical). Start a plot with value None, never an empty frame: its legend stays empty."""
    import pandas as pd

    return pd.DataFrame(
        {name: pd.Series([r[name] for r in rows], dtype=kind) for name, kind in columns.items()}
    )


def titled_line_plot(label: str, value: Any, x: str, y: str, **kwargs: Any) -> Any:
    """A line plot coloured by its `series` column, with its title above the box: a block label
    would take the legend's room in the plot's box."""
    import gradio as gr

    gr.Markdown(f"**{label}**")
    return gr.LinePlot(
        value, x=x, y=y, color="series", color_title="", label=label, show_label=False, **kwargs
    )


def loss_plot(label: str = "loss", **kwargs: Any) -> Any:
    """An empty loss-curve plot (train and validation loss against optimizer step)."""
    # no value, not an empty frame: a plot that starts empty never fills its legend
    return titled_line_plot(label, None, "step", "loss", height=280, **kwargs)
