"""`slm run RECIPE`: distill (when the recipe names a teacher) -> validate data -> SFT -> DPO (when
the recipe has preference data) -> export + quantize + quant eval -> evaluate base vs tuned vs
each quantization -> one final report.

Each stage records a fingerprint of its inputs (and of the stages before it) in
`RUN/pipeline.json`; a stage whose fingerprint is unchanged is skipped, `--force STAGE` reruns it
(and everything after it). Training resumes from its last checkpoint on its own, so an interrupted
pipeline continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.config import read_yaml
from slmkit.console import info
from slmkit.errors import ConfigError, DataError
from slmkit.export.config import ExportSection
from slmkit.recipe import Recipe, load_recipe

STAGES = ("distill", "validate", "sft", "dpo", "export", "evaluate", "report")
STATE_FILE = "pipeline.json"

# `--quick`: the same journey in a few minutes (for tests and a first look); written to OUTPUT_DIR-quick.
QUICK_OVERRIDES = [
    "train.max_steps=24",
    "train.eval_steps=12",
    "train.save_steps=12",
    "train.logging_steps=4",
    "preference.max_steps=4",
    "evaluate.limit=6",
    "evaluate.max_tokens=32",
    "evaluate.bootstrap_samples=200",
    "export.quants=[q8_0]",
    "export.max_prompts=4",
    "export.max_tokens=32",
    "export.ppl_chunks=4",
]


@dataclass
class StageRecord:
    fingerprint: str
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineResult:
    run_dir: Path
    final_model: Path
    stages: dict[str, StageRecord]
    skipped: list[str]
    report_html: Path
    passed: bool


def load_pipeline_recipe(path: Path, overrides: list[str], quick: bool) -> Recipe:
    """The recipe with `--quick` settings applied first, then the user's `--set` overrides."""
    if not quick:
        return load_recipe(path, overrides)
    data, _ = read_yaml(path)
    out = str(data.get("output_dir", "runs/run")).rstrip("/")
    return load_recipe(path, [*QUICK_OVERRIDES, f"output_dir={out}-quick", *overrides])


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(paths: list[Path]) -> dict[str, str]:
    out = {}
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return out


class PipelineState:
    """What each stage did last time, in RUN/pipeline.json."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / STATE_FILE
        raw = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.stages = {k: StageRecord(**v) for k, v in raw.get("stages", {}).items()}
        # fingerprint of each stage when it last started: equal to the current one and no record
        # means the stage was interrupted with the same inputs, so it resumes
        self.started: dict[str, str] = dict(raw.get("started", {}))

    def done(self, stage: str, fingerprint: str) -> bool:
        rec = self.stages.get(stage)
        return rec is not None and rec.fingerprint == fingerprint

    def interrupted(self, stage: str, fingerprint: str) -> bool:
        return self.started.get(stage) == fingerprint and not self.done(stage, fingerprint)

    def start(self, stage: str, fingerprint: str) -> None:
        self.stages.pop(stage, None)
        self.started[stage] = fingerprint
        self._write()

    def record(self, stage: str, rec: StageRecord) -> None:
        self.stages[stage] = rec
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"stages": {k: vars(v) for k, v in self.stages.items()}, "started": self.started}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2, default=str))
        tmp.replace(self.path)


@dataclass
class _Context:
    recipe: Recipe
    recipe_dir: Path
    run_dir: Path
    state: PipelineState
    force: set[str]
    log: Callable[[str], None]
    skipped: list[str] = field(default_factory=list)
    forced_from: int | None = None
    resume: bool = False  # the running stage continues an interrupted attempt with the same inputs

    def paths(self, items: list[str]) -> list[Path]:
        from slmkit.train.config import resolve_data_paths

        return resolve_data_paths(items, self.recipe_dir)

    def check_inputs(self) -> None:
        """Every file the recipe names exists, before any stage starts."""
        recipe = self.recipe
        named = [("data.train", p) for p in recipe.data.train] + [
            ("data.val", p) for p in recipe.data.val
        ]
        named += [("preference.data", p) for p in recipe.preference.data]
        if recipe.distill.prompts is not None:
            named.append(("distill.prompts", recipe.distill.prompts))
        named += [("evaluate.data", p) for p in _eval_data(recipe)]
        if recipe.export.enabled:
            named += [
                (f"export.{k}", str(v))
                for k in ("heldout", "prompts")
                if (v := getattr(recipe.export, k)) is not None
            ]
        for key, text in named:
            path = self.paths([text])[0]
            if not path.exists():
                raise DataError(
                    f"{key}: {text}: no such file or folder "
                    f"(looked next to the recipe in {self.recipe_dir} and in {Path.cwd()})"
                )

    def run_stage(
        self, stage: str, fingerprint: str, work: Callable[[], dict[str, Any]]
    ) -> StageRecord:
        forced = self.forced_from is not None and STAGES.index(stage) >= self.forced_from
        if not forced and self.state.done(stage, fingerprint):
            self.log(f"[bold]{stage}[/bold]: cached (same inputs as the last run)")
            self.skipped.append(stage)
            return self.state.stages[stage]
        self.resume = not forced and self.state.interrupted(stage, fingerprint)
        if self.resume:
            self.log(f"[bold]{stage}[/bold]: continuing an interrupted run (same inputs)")
        elif stage in self.state.started and not forced:
            self.log(f"[bold]{stage}[/bold]: inputs changed since the last run: running again")
        else:
            self.log(f"[bold]{stage}[/bold]: running")
        self.state.start(stage, fingerprint)
        start = time.perf_counter()
        outputs = work()
        rec = StageRecord(fingerprint, round(time.perf_counter() - start, 1), outputs)
        self.state.record(stage, rec)
        self.log(f"[bold]{stage}[/bold]: done in {rec.seconds:.0f}s")
        return rec


def run_pipeline(
    recipe: Recipe,
    recipe_dir: Path,
    *,
    force: set[str] | None = None,
    log: Callable[[str], None] = info,
) -> PipelineResult:
    """Run every stage of `recipe` in order, skipping those already done with the same inputs."""
    unknown = sorted(set(force or ()) - set(STAGES))
    if unknown:
        raise ConfigError(
            f"--force {', '.join(unknown)}: unknown stage (stages: {', '.join(STAGES)})"
        )
    if recipe.method != "sft":
        raise ConfigError(
            f"method: {recipe.method}: `slm run` starts with SFT; use `slm train` for {recipe.method}"
        )
    run_dir = Path(recipe.output_dir).expanduser().resolve()
    ctx = _Context(
        recipe, recipe_dir.resolve(), run_dir, PipelineState(run_dir), set(force or ()), log
    )
    ctx.check_inputs()
    # stages run in STAGES order, so forcing one reruns it and every later stage (also when the
    # forced stage itself is absent from this recipe, e.g. --force dpo without preference data)
    ctx.forced_from = min((STAGES.index(s) for s in ctx.force), default=None)
    # the eval set is hashed once and kept out of the training chain: a new eval file reruns the
    # leakage check, the export's answer agreement (when it uses those prompts) and the evaluation,
    # never the training
    eval_digest = _file_digest(ctx.paths(_eval_data(recipe)))
    if recipe.distill.enabled:
        recipe = _distill_stage(ctx)
    train_fp = _digest(
        recipe.data.model_dump(mode="json"),
        recipe.preference.model_dump(mode="json"),
        _file_digest(ctx.paths(recipe.data.train + recipe.preference.data)),
    )
    ctx.run_stage("validate", _digest(train_fp, eval_digest), lambda: _validate(ctx))
    fp = _digest(train_fp, _train_fingerprint(recipe))
    ctx.run_stage("sft", fp, lambda: _train_sft(ctx))
    final = run_dir
    if recipe.preference.data:
        fp = _digest(
            fp, recipe.preference.model_dump(mode="json"), recipe.dpo.model_dump(mode="json")
        )
        final = Path(ctx.run_stage("dpo", fp, lambda: _train_dpo(ctx)).outputs["run_dir"])
    export_outputs: dict[str, Any] = {}
    if recipe.export.enabled:
        uses_eval_prompts = recipe.export.prompts is None
        fp = _digest(
            fp, export_fingerprint(recipe.export), eval_digest if uses_eval_prompts else {}
        )
        export_outputs = ctx.run_stage("export", fp, lambda: _export(ctx, final)).outputs
    eval_outputs: dict[str, Any] = {}
    if recipe.evaluate.data:
        fp = _digest(fp, recipe.evaluate.model_dump(mode="json"), eval_digest)
        eval_outputs = ctx.run_stage(
            "evaluate", fp, lambda: _evaluate(ctx, final, export_outputs)
        ).outputs
    from slmkit.pipeline_report import write_pipeline_report

    ctx.forced_from = STAGES.index("report")  # the summary is cheap: always rewritten
    report = ctx.run_stage(
        "report", fp, lambda: write_pipeline_report(run_dir, final, ctx.state.stages)
    )
    return PipelineResult(
        run_dir,
        final,
        ctx.state.stages,
        ctx.skipped,
        Path(report.outputs["html"]),
        bool(eval_outputs.get("passed", True)),
    )


# Settings that change how fast an export runs, never what it produces. `threads` defaults to a
# count read from the load average, so hashing it made a busy machine redo a finished export.
_EXPORT_SPEED_ONLY = {"threads"}


def _distill_stage(ctx: _Context) -> Recipe:
    """Run the distill stage; the recipe to train from then has its output in data.train."""
    from slmkit.distill.config import SPEED_ONLY

    settings = ctx.recipe.distill
    assert settings.prompts is not None
    fp = _digest(
        settings.model_dump(mode="json", exclude=SPEED_ONLY),
        _file_digest(ctx.paths([settings.prompts])),
    )
    output = Path(ctx.run_stage("distill", fp, lambda: _distill(ctx)).outputs["data"])
    data = ctx.recipe.data.model_copy(update={"train": [*ctx.recipe.data.train, str(output)]})
    ctx.recipe = ctx.recipe.model_copy(update={"data": data})
    return ctx.recipe


def _distill(ctx: _Context) -> dict[str, Any]:
    from slmkit.distill.run import check_complete, distill, rejected_path

    output = ctx.run_dir / "distill" / "data.jsonl"
    if not ctx.resume:  # new inputs (or --force): the answers of the last run do not count
        output.unlink(missing_ok=True)
        rejected_path(output).unlink(missing_ok=True)
    settings = ctx.recipe.distill
    assert settings.prompts is not None and settings.teacher is not None
    update = {"prompts": str(ctx.paths([settings.prompts])[0])}
    if (ctx.recipe_dir / settings.teacher).exists():  # a .gguf or run folder next to the recipe
        update["teacher"] = str(ctx.paths([settings.teacher])[0])
    result = distill(settings.model_copy(update=update), output, log=ctx.log)
    check_complete(result)  # unanswered prompts: the stage stays unfinished, a re-run asks them
    if not result.counts["accepted"] and not ctx.recipe.data.train:
        raise DataError(
            f"distill: no teacher answer passed the filters (see {result.rejected}); "
            "nothing to train on"
        )
    ctx.log(f"  distilled: {dict(result.counts)}")
    return {"data": str(output), "rejected": str(result.rejected), **result.counts}


def export_fingerprint(export: ExportSection) -> dict[str, Any]:
    """The export settings that decide the exported files and their measurements."""
    return export.model_dump(mode="json", exclude=_EXPORT_SPEED_ONLY)


def _eval_data(recipe: Recipe) -> list[str]:
    return [str(recipe.evaluate.data)] if recipe.evaluate.data else []


def _train_fingerprint(recipe: Recipe) -> str:
    from slmkit.train.runfolder import recipe_hash

    # without the dpo: section for SFT (the DPO stage's fingerprint adds it): a new beta must
    # not retrain SFT
    return recipe_hash(recipe)


def _validate(ctx: _Context) -> dict[str, Any]:
    from slmkit.data.config import DataConfig
    from slmkit.data.validate import validate_data
    from slmkit.models.load import load_tokenizer

    recipe = ctx.recipe
    tokenizer = load_tokenizer(recipe.model) if recipe.init.mode == "pretrained" else None
    config = DataConfig.from_section(
        recipe.data, ctx.paths(recipe.data.train), ctx.paths(_eval_data(recipe))
    )
    report = validate_data(config, tokenizer)
    if not report.ok:
        first = next(p for p in report.problems if p.severity == "error")
        raise DataError(
            f"{first} ({report.n_errors} error(s); run `slm data validate` for all of them)"
        )
    outputs: dict[str, Any] = {"records": len(report.loaded.records), "warnings": report.n_warnings}
    if recipe.preference.data:
        from slmkit.data import load_records

        prefs = load_records(
            list[str | Path](ctx.paths(recipe.preference.data)), names=recipe.preference.names
        )
        prefs.raise_for_errors()
        outputs["preference_pairs"] = len(prefs.records)
    ctx.log(f"  data ok: {outputs}")
    return outputs


def _train_sft(ctx: _Context) -> dict[str, Any]:
    from slmkit.train.run import train

    result = train(ctx.recipe, ctx.recipe_dir, resume=None if ctx.resume else False)
    return {
        "run_dir": str(result.run_dir),
        "steps": result.steps,
        "final_loss": result.final_loss,
        "diagnosis": result.diagnosis.status,
        "tokens_per_second": result.tokens_per_second,
        "resumed_from": result.resumed_from,
    }


def _train_dpo(ctx: _Context) -> dict[str, Any]:
    from slmkit.train.run import train

    recipe, pref = ctx.recipe, ctx.recipe.preference
    dpo_recipe = recipe.model_copy(
        deep=True,
        update={
            "method": "dpo",
            "output_dir": str(ctx.run_dir / "dpo"),
            "data": recipe.data.model_copy(
                update={
                    "train": pref.data,
                    "names": pref.names,
                    "val": [],
                    "val_ratio": 0.0,
                    "format": "auto",
                }
            ),
            "dpo": recipe.dpo.model_copy(update={"from_run": str(ctx.run_dir)}),
            "train": recipe.train.model_copy(
                update={"lr": pref.lr, "epochs": pref.epochs, "max_steps": pref.max_steps}
            ),
        },
    )
    result = train(
        Recipe.model_validate(dpo_recipe.model_dump()),
        ctx.recipe_dir,
        resume=None if ctx.resume else False,
    )
    return {
        "run_dir": str(result.run_dir),
        "steps": result.steps,
        "final_loss": result.final_loss,
        "diagnosis": result.diagnosis.status,
        **{k: v for k, v in result.summary.items() if k.startswith(("rewards", "dpo"))},
    }


def _export(ctx: _Context, final: Path) -> dict[str, Any]:
    from slmkit.export.pipeline import export_model

    cfg = ctx.recipe.export.to_export_config()
    if cfg.prompts is None and ctx.recipe.evaluate.data:
        cfg = cfg.model_copy(update={"prompts": ctx.paths(_eval_data(ctx.recipe))[0]})
    if cfg.heldout is not None and not cfg.heldout.is_absolute():
        cfg = cfg.model_copy(update={"heldout": ctx.paths([str(cfg.heldout)])[0]})
    result = export_model(final, ctx.run_dir / "export", cfg, log=ctx.log)
    return {
        "out_dir": str(result.out_dir),
        "recommended": result.recommended,
        "files": {f.level: f.file for f in result.files},
        "timings_s": result.timings_s,
    }


def _evaluate(ctx: _Context, final: Path, export_outputs: dict[str, Any]) -> dict[str, Any]:
    from slmkit.evaluate.config import EvalConfig, ModelSpec
    from slmkit.evaluate.run import run_eval

    section = ctx.recipe.evaluate
    models = [
        ModelSpec(name="base", ref=ctx.recipe.model, engine=section.base_engine),
        ModelSpec(name="tuned", ref=str(ctx.run_dir)),
    ]
    if final != ctx.run_dir:
        models.append(ModelSpec(name="dpo", ref=str(final)))
    for level, file in export_outputs.get("files", {}).items():
        if level not in ("f16", "bf16", "f32") or section.include_reference_gguf:
            models.append(ModelSpec(name=level, ref=file))
    settings = section.model_dump(exclude={"data", "base_engine", "include_reference_gguf"})
    config = EvalConfig(
        **settings,
        models=models,
        data=ctx.paths(_eval_data(ctx.recipe))[0],
        out_dir=ctx.run_dir / "eval",
    )
    result = run_eval(config)
    main = {m.name: m.main for m in result.models}
    return {
        "report_html": str(result.report_html),
        "report_json": str(result.report_json),
        "passed": result.passed,
        "main_metric": result.main_metric,
        "main": main,
        "verdict": [vars(row) for row in result.verdict],
    }
