"""Train: a recipe form (defaults and help from the recipe's models) that shows the YAML it writes,
the memory estimate, and start / stop / resume of a `slm train` child process with its live loss
curve, step, tokens/s, ETA and diagnosis; a reloaded page re-attaches to the latest training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.errors import ConfigError
from slmkit.train import runfolder
from slmkit.ui import train_form
from slmkit.ui.charts import loss_frame, loss_plot
from slmkit.ui.context import Board
from slmkit.ui.jobs import Job
from slmkit.ui.messages import error_html, reports_errors, status_html
from slmkit.ui.tabs.runs import run_details

REFRESH_S = 2.0
LOADED_OUTPUTS = 1 + len(train_form.FORM_KEYS) + 2  # status, the fields, run name, loaded recipe
LABELS = {
    "model": "model",
    "data.train": "data.train (files or dataset_info folders, one per line)",
    "data.template": "data.template (empty: the model's own)",
    "data.max_samples": "data.max_samples (empty: all)",
}


def _component(key: str) -> Any:
    import gradio as gr

    info = train_form.field_info(key)
    label = LABELS.get(key, key)
    value = train_form.default_value(key)
    elem_id = "train-" + key.replace(".", "-").replace("_", "-")
    common: dict[str, Any] = {"label": label, "info": _first_sentence(info.description or "")}
    common["elem_id"] = elem_id
    kind = train_form.kind(key)
    if kind == "choice":
        return gr.Dropdown(train_form.choices(key), value=value, **common)
    if kind == "bool":
        return gr.Checkbox(value, **common)
    if kind in ("int", "float"):
        return gr.Number(value, precision=0 if kind == "int" else None, **common)
    return gr.Textbox(value, lines=3 if kind == "lines" else 1, **common)


def _first_sentence(text: str) -> str:
    """The start of a field's description: the form stays readable, docs/train.md has the rest."""
    return text.split(". ")[0].split("; ")[0].rstrip(".") + "."


def _latest(board: Board) -> Job | None:
    return board.jobs.latest("train")


@dataclass
class RecipeForm:
    """The recipe's fields, the run name and the YAML they make, with Load and Save."""

    fields: dict[str, Any]
    run_name: Any
    recipe_code: Any
    load: Any
    save: Any
    saved: Any
    base: Any  # the loaded recipe's settings that the form does not show

    @property
    def inputs(self) -> list[Any]:
        return [self.fields[key] for key in train_form.FORM_KEYS]

    @property
    def values(self) -> list[Any]:
        """What every action reads: the fields, the run name, the loaded recipe."""
        return [*self.inputs, self.run_name, self.base]


@dataclass
class Controls:
    """Estimate, Start, Stop and Resume, the status line and the memory table."""

    estimate: Any
    start: Any
    stop: Any
    resume: Any
    status: Any
    memory: Any


@dataclass
class LiveView:
    """The latest training as it runs: state, progress line, loss curve, diagnosis, log tail."""

    live: Any
    progress: Any
    plot: Any
    diagnosis: Any
    log: Any
    seen: Any  # (job id, metrics rows) last sent to the plot

    @property
    def outputs(self) -> list[Any]:
        return [self.live, self.progress, self.plot, self.diagnosis, self.log, self.seen]


def build(board: Board) -> None:
    form = _recipe_form(board)
    controls = _controls()
    live = _live_view()
    _wire(board, form, controls, live, _Actions(board))


def _recipe_form(board: Board) -> RecipeForm:
    import gradio as gr

    fields: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                run_name = gr.Textbox(
                    Path(train_form.field_info("output_dir").default).name,
                    label=f"run name (folder under {board.runs_dir})",
                    elem_id="train-run-name",
                )
                for key in ("model", "method", "finetuning"):
                    fields[key] = _component(key)
            with gr.Row():
                fields["data.train"] = _component("data.train")
            for row in (
                ("data.val_ratio", "data.cutoff_len", "data.packing", "train.precision"),
                ("lora.r", "lora.alpha", "lora.dropout", "lora.target_modules"),
                ("train.lr", "train.epochs", "train.max_steps", "train.seed"),
                ("train.batch_size", "train.grad_accum", "train.scheduler", "train.max_grad_norm"),
                ("data.template", "data.max_samples"),
            ):
                with gr.Row():
                    for key in row:
                        fields[key] = _component(key)
        with gr.Column(scale=2):
            recipe_code = gr.Code(
                label="recipe YAML (what Start saves and runs)",
                language="yaml",
                interactive=False,
                max_lines=30,
                elem_id="train-yaml",
            )
            with gr.Row():
                load = gr.UploadButton(
                    "Load recipe…", file_types=[".yaml", ".yml"], size="sm", elem_id="train-load"
                )
                save = gr.Button("Save recipe", size="sm", elem_id="train-save")
            saved = gr.File(
                label="saved recipe", interactive=False, visible=False, elem_id="train-saved"
            )
    return RecipeForm(fields, run_name, recipe_code, load, save, saved, gr.State(None))


def _controls() -> Controls:
    import gradio as gr

    with gr.Row():
        estimate = gr.Button("Estimate memory", elem_id="train-estimate")
        start = gr.Button("Start", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
        resume = gr.Button("Resume", elem_id="train-resume")
    status = gr.HTML(status_html("fill the form, then Start"), elem_id="train-status")
    memory = gr.Dataframe(
        headers=["part", "train fp32", "train bf16"],
        interactive=False,
        label="memory estimate (GiB)",
        visible=False,
        elem_id="train-memory",
    )
    return Controls(estimate, start, stop, resume, status, memory)


def _live_view() -> LiveView:
    import gradio as gr

    gr.Markdown("### Training")
    live = gr.HTML(status_html("no training started from this board yet"), elem_id="train-live")
    progress = gr.Markdown(elem_id="train-progress")
    plot = loss_plot("loss (train and validation)", elem_id="train-plot")
    diagnosis = gr.Markdown(elem_id="train-diagnosis")
    log = gr.Textbox(
        label="log (tail)", lines=8, max_lines=8, interactive=False, elem_id="train-log"
    )
    return LiveView(live, progress, plot, diagnosis, log, gr.State(None))


def _wire(
    board: Board, form: RecipeForm, controls: Controls, live: LiveView, act: _Actions
) -> None:
    """Each control to its action: every form change previews the YAML; the timer and a
    reloaded page show the latest training."""
    import gradio as gr

    status, values = controls.status, form.values
    for component in [*form.inputs, form.run_name]:
        component.change(
            act.preview, inputs=values, outputs=[status, form.recipe_code], show_progress="hidden"
        )
    form.save.click(act.save_recipe, inputs=values, outputs=[status, form.saved])
    controls.estimate.click(act.show_estimate, inputs=values, outputs=[status, controls.memory])
    started = [status, controls.memory, form.recipe_code, live.seen]
    controls.start.click(act.start_training, inputs=values, outputs=started)
    controls.resume.click(act.resume_training, inputs=values, outputs=started)
    controls.stop.click(act.stop_training, outputs=[status])
    loaded = [status, *form.inputs, form.run_name, form.base]
    form.load.upload(act.load_recipe_file, inputs=[form.load], outputs=loaded)
    board.on_load(act.attach, [], loaded)
    board.on_load(act.refresh, [live.seen], live.outputs)
    board.on_load(act.draft, values, [status, form.recipe_code])
    timer = gr.Timer(REFRESH_S)
    timer.tick(act.refresh, inputs=[live.seen], outputs=live.outputs, show_progress="hidden")


class _Actions:
    """What the controls do. Each takes the form's values (`RecipeForm.values`) and answers the
    outputs it is wired to; a `ConfigError` becomes the status line (`reports_errors`)."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.attach = reports_errors(outputs=LOADED_OUTPUTS)(self._attach)
        self.load_recipe_file = reports_errors(outputs=LOADED_OUTPUTS)(self._load_recipe_file)
        self.draft = reports_errors(outputs=2)(self._draft)
        self.preview = reports_errors(outputs=2)(self._preview)
        self.save_recipe = reports_errors(outputs=2)(self._save_recipe)
        self.show_estimate = reports_errors(outputs=2)(self._show_estimate)
        self.start_training = reports_errors(outputs=4)(self._start_training)
        self.stop_training = reports_errors(outputs=1)(self._stop_training)

    def drafted(self, values: tuple[Any, ...]) -> tuple[dict[str, Any], Path, str]:
        """(recipe data, where Start saves it, its YAML) of the form, not yet validated."""
        *form, name, loaded = values
        data = train_form.recipe_data(form, name, self.board.runs_dir, loaded)
        path = self.board.folder("recipes") / f"{name.strip()}.yaml"
        return data, path, train_form.recipe_yaml(data, path)

    def checked(self, values: tuple[Any, ...]) -> tuple[Any, Path, str]:
        data, path, text = self.drafted(values)
        return train_form.validate_recipe(data), path, text

    def _draft(self, *values: Any) -> tuple[Any, ...]:
        import gradio as gr

        return gr.skip(), self.drafted(values)[2]

    def _preview(self, *values: Any) -> tuple[Any, ...]:
        data, _, text = self.drafted(values)
        try:
            recipe = train_form.validate_recipe(data)
        except ConfigError as exc:
            return error_html(exc), text
        return status_html(f"recipe ok: run folder {recipe.output_dir}"), text

    def _save_recipe(self, *values: Any) -> tuple[Any, ...]:
        import gradio as gr

        _, path, text = self.checked(values)
        path.write_text(text)
        return status_html(f"saved {path}", "ok"), gr.File(str(path), visible=True)

    def _show_estimate(self, *values: Any) -> tuple[Any, ...]:
        import gradio as gr

        recipe, _, _ = self.checked(values)
        line, rows = train_form.memory_estimate(recipe)
        headers = train_form.estimate_columns(rows)
        return status_html(line), gr.Dataframe(rows, headers=headers, visible=True)

    def _start_training(self, *values: Any, resuming: bool = False) -> tuple[Any, ...]:
        import gradio as gr

        recipe, path, text = self.checked(values)
        job = _latest(self.board)
        if job is not None and self.board.jobs.is_running(job):
            raise ConfigError(f"a training is running ({job.target}): stop it first")
        run_dir = Path(recipe.output_dir)
        if not resuming and (run_dir / runfolder.MANIFEST).is_file():
            raise ConfigError(f"{run_dir} already holds a run: pick another run name, or Resume it")
        line, rows = train_form.memory_estimate(recipe)
        path.write_text(text)
        argv = ["train", str(path), *(["--resume"] if resuming else [])]
        self.board.jobs.start("train", argv, run_dir)
        what = "resumed" if resuming else "started"
        return (
            status_html(f"{what} {run_dir.name}; {line}", "ok"),
            gr.Dataframe(rows, headers=train_form.estimate_columns(rows), visible=True),
            text,
            None,
        )

    def resume_training(self, *values: Any) -> tuple[Any, ...]:
        return self.start_training(*values, resuming=True)

    def _stop_training(self) -> str:
        job = _latest(self.board)
        if job is None or not self.board.jobs.is_running(job):
            return status_html("no training is running")
        self.board.jobs.stop(job)
        return status_html(f"stopping {Path(job.target).name} (Ctrl-C: the last checkpoint stays)")

    def refresh(self, held: tuple[str, int] | None) -> tuple[Any, ...]:
        """The latest training's state; the plot only when new metrics arrived."""
        import gradio as gr

        board = self.board
        job = _latest(board)
        if job is None:
            return (gr.skip(),) * 6
        state = board.jobs.state(job)
        run_dir = Path(job.target)
        try:
            rows = runfolder.read_metrics(run_dir)
        except ValueError:  # a line being written: next tick
            return (gr.skip(),) * 6
        text = board.jobs.log_text(job)
        recipe_path = job.argv[1] if len(job.argv) > 1 else None
        steps = train_form.total_steps(recipe_path, text)
        line = train_form.progress(rows, steps, state.status == "running").line()
        kind = {"failed": "error", "finished": "ok"}.get(state.status, "info")
        frame = loss_frame([run_dir]) if held != (job.id, len(rows)) else None
        diag = run_details(run_dir)[2] if (run_dir / "diagnosis.json").is_file() else ""
        return (
            status_html(f"{run_dir.name}: {state.message}", kind),
            line,
            # an empty frame (no loss logged yet) would leave the plot without axes and legend
            frame if frame is not None and len(frame) else gr.skip(),
            diag,
            text[-3000:],
            (job.id, len(rows)),
        )

    def _attach(self) -> tuple[Any, ...]:
        """On page load: the form shows the latest training's recipe."""
        import gradio as gr

        job = _latest(self.board)
        recipe_path = Path(job.argv[1]) if job is not None and len(job.argv) > 1 else None
        if recipe_path is None or not recipe_path.is_file():
            return (gr.skip(),) * LOADED_OUTPUTS
        values, name, data = train_form.load_form(recipe_path)
        return (gr.skip(), *values, name, data)

    def _load_recipe_file(self, path: str | None) -> tuple[Any, ...]:
        import gradio as gr

        if not path:
            return (gr.skip(),) * LOADED_OUTPUTS
        values, name, data = train_form.load_form(Path(path))
        return (status_html(f"loaded {Path(path).name}", "ok"), *values, name, data)
