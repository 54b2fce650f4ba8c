"""`run_eval(config) -> EvalResult`: generate with every model, score, judge criteria, write the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from slmkit.console import info, progress_bar, warn
from slmkit.errors import ModelNotFoundError, SlmError
from slmkit.evaluate import judge, scoring
from slmkit.evaluate.config import EvalConfig
from slmkit.evaluate.evalset import EvalItem, load_eval_set
from slmkit.evaluate.generate import Generation, ModelTarget, generate_answers, model_target
from slmkit.evaluate.retrieval import RetrievalResult, evaluate_retrieval
from slmkit.evaluate.verdict import (
    VerdictRow,
    export_advice,
    export_kld,
    judge_criteria,
    passed,
)


@dataclass
class ModelResult:
    """Everything measured for one model."""

    name: str
    ref: str
    kind: str
    engine: str
    generations: list[Generation]
    scores: list[scoring.ItemScores]
    summary: scoring.ModelSummary
    main: dict[str, float | None] = field(default_factory=dict)
    generated: int = 0
    kld: float | None = None
    advised_against: str = ""  # why its export advised against this GGUF
    run_dir: Path | None = None


@dataclass
class EvalResult:
    config: EvalConfig
    items: list[EvalItem]
    models: list[ModelResult]
    main_metric: str
    verdict: list[VerdictRow]
    report_json: Path
    report_html: Path
    notes: list[str] = field(default_factory=list)
    retrieval: RetrievalResult | None = None

    @property
    def passed(self) -> bool:
        return passed(self.verdict)

    @property
    def generated(self) -> int:
        return sum(m.generated for m in self.models)


def run_eval(config: EvalConfig) -> EvalResult:
    """The evaluate stage: same prompts to every model, same metrics, one report."""
    items = load_eval_set(config.data)[: config.limit]
    targets = [model_target(spec, config) for spec in config.models]  # bad references fail early
    retrieval = evaluate_retrieval(config.retrieval) if config.retrieval else None
    answers: dict[str, list[Generation]] = {}
    generated: dict[str, int] = {}
    for target in targets:
        answers[target.name], generated[target.name] = _answers(target, items, config)
    scores = {
        name: [scoring.score_answer(item, g.text) for item, g in zip(items, gens, strict=True)]
        for name, gens in answers.items()
    }
    notes = []
    if config.similarity:
        try:
            scoring.add_similarity(items, answers, scores)
        except ModelNotFoundError as exc:  # the embedder package is optional: warn, do not fail
            warn(f"similarity skipped: {exc}")
            notes.append(f"similarity skipped: {exc}")
    if config.judge.enabled and len(targets) > 1:
        _add_judge(config, items, targets, answers, scores)
    elif config.judge.enabled:
        notes.append("the judge compares models pairwise with the first: give two models or more")
    main_metric = scoring.main_metric_for(items, config.main_metric)
    if main_metric != config.main_metric:
        notes.append(
            f"no item has must_include facts: main metric is {main_metric}, not {config.main_metric}"
        )
    models = [
        _model_result(t, items, answers, scores, generated, config, main_metric) for t in targets
    ]
    values = {m.name: m.summary.values for m in models}
    verdict = judge_criteria(
        config.criteria,
        [m.name for m in models],
        values,
        {m.name: m.kld for m in models},
        {m.name: m.advised_against for m in models if m.advised_against},
    )
    from slmkit.evaluate.report import write_report

    result = EvalResult(
        config,
        items,
        models,
        main_metric,
        verdict,
        config.out_dir / "report.json",
        config.out_dir / "report.html",
        notes,
        retrieval,
    )
    write_report(result)
    for target, model in zip(targets, models, strict=True):
        _record_scores(target, model, main_metric, config)
    return result


def _record_scores(
    target: ModelTarget, model: ModelResult, main_metric: str, config: EvalConfig
) -> None:
    """Scores go to the registry version whose path was evaluated (a registry problem only warns)."""
    from slmkit.registry.hooks import record_eval

    resolved = target.resolved
    version = resolved.extra.get("registry_version")
    scores = {
        "main_metric": main_metric,
        "main": model.main.get("mean"),
        "metrics": model.summary.values,
        "eval_set": str(config.data),
        "report": str(config.out_dir / "report.json"),
    }
    candidates = [f"@{version}" if isinstance(version, str) else None, resolved.run_dir]
    record_eval([*candidates, resolved.gguf, resolved.path], scores)


def _answers(
    target: ModelTarget, items: list[EvalItem], config: EvalConfig
) -> tuple[list[Generation], int]:
    label = f"{target.name} ({target.engine})"
    with progress_bar(f"eval {label}", total=len(items)) as progress:
        task = progress.add_task(f"eval {label}", total=len(items))
        gens, made = generate_answers(
            target, items, config, on_answer=lambda: progress.advance(task)
        )
    info(f"{target.name}: {made} generated, {len(items) - made} from cache")
    errors = [g.error for g in gens if g.error is not None]
    if errors and len(errors) == len(gens):
        raise SlmError(
            f"model {target.name!r} ({target.spec.ref}) answered no question: {errors[0]}"
        )
    if errors:
        warn(f"{target.name}: {len(errors)} of {len(gens)} questions failed ({errors[0]})")
    return gens, made


def _add_judge(
    config: EvalConfig,
    items: list[EvalItem],
    targets: list[ModelTarget],
    answers: dict[str, list[Generation]],
    scores: dict[str, list[scoring.ItemScores]],
) -> None:
    first = targets[0].name
    baseline = [g.text for g in answers[first]]
    for score in scores[first]:
        score.judge_win_rate = 0.5  # the baseline against itself
    rewarded = judge.RewardJudge(config.judge.reward_model) if config.judge.reward_model else None
    for target in targets[1:]:
        candidate = [g.text for g in answers[target.name]]
        wins = (
            rewarded.pairwise_scores(items, baseline, candidate)
            if rewarded is not None
            else judge.pairwise_scores(config.judge, items, baseline, candidate)
        )
        for score, win in zip(scores[target.name], wins, strict=True):
            score.judge_win_rate = win


def _model_result(
    target: ModelTarget,
    items: list[EvalItem],
    answers: dict[str, list[Generation]],
    scores: dict[str, list[scoring.ItemScores]],
    generated: dict[str, int],
    config: EvalConfig,
    main_metric: str,
) -> ModelResult:
    first = config.models[0].name
    baseline = scores[first] if target.name != first else None
    main = scoring.interval(
        scores[target.name],
        main_metric,
        baseline,
        samples=config.bootstrap_samples,
        confidence=config.confidence,
        seed=config.seed,
    )
    resolved = target.resolved
    return ModelResult(
        name=target.name,
        ref=target.spec.ref,
        kind=resolved.kind,
        engine=target.engine,
        generations=answers[target.name],
        scores=scores[target.name],
        summary=scoring.summarize(items, scores[target.name], answers[target.name]),
        main=main,
        generated=generated[target.name],
        kld=export_kld(resolved),
        advised_against=export_advice(resolved),
        run_dir=resolved.run_dir,
    )
