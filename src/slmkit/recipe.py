"""The top-level recipe that `slm train` (and later `slm run`) loads: a plain composition of
section models, each defined beside the stage that uses it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from slmkit.config import StrictModel, load_config
from slmkit.data.config import DataSection
from slmkit.distill.config import DistillSettings
from slmkit.evaluate.config import EvalSection
from slmkit.export.config import ExportSection
from slmkit.train.config import (
    PREFERENCE_METHODS,
    DpoSection,
    FinetuningType,
    FreezeSection,
    GrpoSection,
    InitSection,
    LoraSection,
    Method,
    PreferenceSection,
    TrainSection,
)


class Recipe(StrictModel):
    """One YAML file that says what to train, on which data, and how."""

    model: str = Field(
        default="default",
        description="Base model reference: default, a local HF folder, a .gguf, a hub id.",
    )
    method: Method = Field(
        default="sft",
        description="sft: supervised chat fine-tuning; dpo, orpo, simpo: preference pairs (orpo "
        "and simpo need no reference model); kto: answers rated good or bad, unpaired; grpo: "
        "prompts, with rewards scoring sampled answers; reward: a reward model (a score head) from "
        "preference pairs; pt: plain text.",
    )
    finetuning: FinetuningType = Field(
        default="lora",
        description="lora (default), qlora (4-bit base, CUDA only), full, or freeze (last N layers).",
    )
    output_dir: str = Field(
        default="runs/run", description="Run folder (relative to the current directory)."
    )
    data: DataSection = Field(default_factory=DataSection, description="Training data.")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA adapter settings.")
    freeze: FreezeSection = Field(
        default_factory=FreezeSection, description="Settings of `finetuning: freeze`."
    )
    train: TrainSection = Field(
        default_factory=TrainSection, description="Optimisation and checkpoints."
    )
    dpo: DpoSection = Field(
        default_factory=DpoSection,
        description="Preference tuning settings (method: dpo, kto, orpo, simpo).",
    )
    grpo: GrpoSection = Field(
        default_factory=GrpoSection,
        description="Reinforcement learning with rewards (method: grpo).",
    )
    init: InitSection = Field(
        default_factory=InitSection, description="Pretrained or random initialisation."
    )
    preference: PreferenceSection = Field(
        default_factory=PreferenceSection,
        description="`slm run` only: a DPO stage after SFT on these preference pairs.",
    )
    distill: DistillSettings = Field(
        default_factory=DistillSettings,
        description="`slm run` only: a teacher's answers to a prompt set, filtered, become SFT "
        "data (added to data.train) before training.",
    )
    evaluate: EvalSection = Field(
        default_factory=EvalSection,
        description="`slm run` only: evaluate base vs tuned vs each export on an eval set.",
    )
    export: ExportSection = Field(
        default_factory=ExportSection,
        description="`slm run` only: merge, GGUF conversion, quantization and quant eval.",
    )

    @model_validator(mode="after")
    def _check_combinations(self) -> Recipe:
        if not self.data.train and not self.distill.enabled:
            raise ValueError(
                "data.train: give at least one data file or dataset_info folder "
                "(or a distill: teacher and prompts)"
            )
        if self.init.mode == "random" and self.finetuning in ("lora", "qlora"):
            raise ValueError(
                "init.mode: random needs finetuning: full (an adapter on random weights learns nothing useful)"
            )
        if self.method == "reward" and (self.dpo.from_run or self.init.mode == "random"):
            raise ValueError(
                "method: reward starts from a pretrained base (`model:`), with a new score head; "
                "dpo.from_run and init.mode: random do not apply"
            )
        if self.dpo.from_run and self.method not in (*PREFERENCE_METHODS, "grpo"):
            raise ValueError("dpo.from_run is only used with method: dpo, kto, orpo, simpo or grpo")
        if self.dpo.ftx and self.method not in ("dpo", "simpo"):
            raise ValueError(
                f"dpo.ftx: used with method dpo or simpo, not {self.method} "
                "(orpo has its SFT term built in)"
            )
        if self.method == "kto" and self.train.batch_size < 2:
            raise ValueError(
                "train.batch_size: method kto needs at least 2 (its KL estimate pairs each prompt "
                "with another answer of the batch)"
            )
        if self.method == "grpo" and (self.data.val or self.data.val_ratio > 0):
            raise ValueError(
                "data.val: method grpo does not validate on held-out prompts; score the run with "
                "`slm eval` instead (remove data.val / data.val_ratio)"
            )
        if self.data.val and self.data.val_ratio > 0:
            raise ValueError("data.val and data.val_ratio are exclusive: give one")
        return self


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe YAML; errors name the file, line and field."""
    return load_config(path, Recipe, overrides)


def recipe_reference_markdown() -> str:
    """The recipe reference table of docs/train.md, generated from the Field descriptions."""
    from slmkit.config import reference_markdown

    return reference_markdown(Recipe)
