"""Section models of a training recipe. Every default of `slm train` lives here, described once."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, field_validator, model_validator

from slmkit.config import StrictModel

Method = Literal["sft", "dpo", "kto", "orpo", "simpo", "grpo", "reward", "pt"]
# methods that learn from rated answers (the `dpo:` section's settings); KTO from unpaired ratings
PREFERENCE_METHODS: tuple[str, ...] = ("dpo", "kto", "orpo", "simpo")
# methods that compare the policy with a frozen reference model (ORPO and SimPO need none)
REFERENCE_METHODS: tuple[str, ...] = ("dpo", "kto")
# beta when the recipe leaves it out: DPO's and KTO's papers use 0.1, ORPO's lambda is 0.1,
# SimPO's paper 2.0-2.5
DEFAULT_BETA = {"dpo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0}
FinetuningType = Literal["lora", "qlora", "full", "freeze"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


def auto_or_number(above: float, at_most: float | None = None) -> Any:
    """A validator for fields that take `auto` or a number in (above, at_most]: one error line."""
    wanted = f"`auto` or a number > {above:g}" + (f" and <= {at_most:g}" if at_most else "")

    def check(value: Any) -> float | str:
        if value == "auto":
            return "auto"
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not number > above or (at_most is not None and number > at_most):
            raise ValueError(f"expected {wanted}, got {value!r}")
        return number

    return PlainValidator(check, json_schema_input_type=float | Literal["auto"])


class LoraSection(StrictModel):
    """LoRA adapter settings (used by `finetuning: lora` and `qlora`)."""

    r: int = Field(default=16, ge=1, le=1024, description="Adapter rank.")
    alpha: int = Field(
        default=32,
        gt=0,
        description="Scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA).",
    )
    dropout: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input."
    )
    target_modules: list[str] | Literal["all-linear"] = Field(
        default="all-linear",
        description="Module names to adapt, e.g. [q_proj, k_proj, v_proj, o_proj], or `all-linear`.",
    )
    use_rslora: bool = Field(
        default=False, description="Rank-stabilised LoRA scaling (alpha / sqrt(r))."
    )
    use_dora: bool = Field(
        default=False, description="Weight-decomposed LoRA (DoRA); slower, sometimes better."
    )


class FreezeSection(StrictModel):
    """Which layers stay trainable with `finetuning: freeze`."""

    trainable_layers: int = Field(
        default=2, ge=1, description="Train only the last N transformer blocks."
    )
    train_embeddings: bool = Field(
        default=False, description="Also train the embeddings / LM head."
    )


class TrainSection(StrictModel):
    """Optimisation, schedule, checkpoints and precision."""

    lr: Annotated[float | Literal["auto"], auto_or_number(above=0, at_most=1.0)] = Field(
        default="auto",
        description="Peak learning rate. `auto`: from the method, fine-tuning type and model size "
        "(LoRA: 1e-3 below 1B parameters, 5e-4 below 4B, 2e-4 above; full: 5e-5 below 1B, 1e-5 above; "
        "DPO, KTO, ORPO, SimPO: 5e-5 on an adapter, 1e-6 on all weights; GRPO on an adapter: half "
        "of LoRA's; reward models: 1e-4 on an adapter, 1e-5 on all weights; random init: 3e-3).",
    )
    epochs: Annotated[float | Literal["auto"], auto_or_number(above=0)] = Field(
        default="auto",
        description="Passes over the training data (ignored when max_steps > 0). `auto`: 3, or for "
        "SFT on a small set as many as give 200 optimizer steps (at most 10).",
    )
    max_steps: int = Field(
        default=-1, description="Stop after this many optimizer steps (-1 = use epochs)."
    )
    batch_size: int = Field(
        default=4,
        ge=1,
        description="Samples per device per forward pass (small batches give small sets more steps).",
    )
    grad_accum: int = Field(default=1, ge=1, description="Forward passes per optimizer step.")
    optimizer: Literal[
        "adamw_torch", "adamw_torch_fused", "sgd", "adafactor", "paged_adamw_8bit", "adamw_8bit"
    ] = Field(
        default="adamw_torch",
        description="Optimizer name as transformers spells it (8-bit ones need bitsandbytes + CUDA).",
    )
    weight_decay: float = Field(default=0.0, ge=0.0, description="Decoupled weight decay.")
    scheduler: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts"
    ] = Field(default="cosine", description="Learning-rate schedule.")
    warmup_ratio: float = Field(
        default=0.03, ge=0.0, lt=1.0, description="Share of steps spent warming up the lr."
    )
    max_grad_norm: float = Field(
        default=1.0, ge=0.0, description="Gradient clipping norm (0 = off)."
    )
    logging_steps: int = Field(default=1, ge=1, description="Log loss every N optimizer steps.")
    eval_steps: int | None = Field(
        default=None, ge=1, description="Validation loss every N steps (default: each epoch)."
    )
    save_steps: int = Field(default=50, ge=1, description="Checkpoint every N optimizer steps.")
    save_total_limit: int = Field(default=2, ge=1, description="Keep only the last N checkpoints.")
    precision: Precision = Field(
        default="auto",
        description="`auto`: bf16 autocast on a bf16-capable CUDA GPU, and on a CPU where a timed probe "
        "runs bf16 matmuls in at most half fp32's time (native bf16: AVX512-BF16, AMX); fp32 elsewhere. "
        "`bf16`/`fp16` force mixed precision.",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute activations in the backward pass: less memory, ~30% slower.",
    )
    answer_logits_only: bool = Field(
        default=True,
        description="Project onto the vocabulary only at positions that have a label (the answer "
        "tokens), not at every position: the same loss and gradients with less compute; off = "
        "logits everywhere (models whose forward has no `logits_to_keep` always do that).",
    )
    group_by_length: bool = Field(
        default=True,
        description="Batch samples of similar length together (less padding without packing).",
    )
    neftune_alpha: float | None = Field(
        default=None,
        gt=0,
        description="NEFTune (SFT only): scale of uniform noise added to the input embeddings while "
        "training (5 is the paper's value); aims at better answers to reworded questions on small data.",
    )
    seed: int = Field(default=42, description="Seed for initialisation, data order and dropout.")
    num_workers: int = Field(default=0, ge=0, description="DataLoader worker processes.")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"],  # type: ignore[arg-type]
        description="Experiment trackers (TensorBoard is always installed; MLflow/W&B when present).",
    )
    stop_on_nan: bool = Field(
        default=True, description="Stop at a NaN/inf loss, keeping the last good checkpoint."
    )


class DpoSection(StrictModel):
    """Learning from rated answers: `method: dpo`, `kto`, `orpo` and `simpo`."""

    beta: float | None = Field(
        default=None,
        gt=0,
        description="Strength of the preference term; unset = the method's paper value (dpo, kto: "
        "0.1, the pull towards the reference; orpo: 0.1, the odds-ratio weight lambda; simpo: 2.0, "
        "the reward scale).",
    )
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        default="sigmoid", description="DPO loss variant (method: dpo)."
    )
    from_run: str | None = Field(
        default=None,
        description="An SFT run folder whose adapter is trained further (its base becomes the model; "
        "for dpo and kto the reference is the SFT model).",
    )
    max_prompt_len: int | None = Field(
        default=None, ge=8, description="Truncate prompts to this many tokens."
    )
    ftx: float = Field(
        default=0.0,
        ge=0,
        description="Weight of an SFT loss (NLL of the chosen answers) added to the DPO or SimPO "
        "loss, as LLaMA-Factory's pref_ftx / RPO: keeps preference tuning from moving answers SFT "
        "got right (0 = off; ORPO has it built in).",
    )
    simpo_gamma: float = Field(
        default=1.0,
        ge=0,
        description="SimPO's target margin between the chosen and rejected answers' mean log-prob "
        "times beta (the paper's gamma; method: simpo).",
    )
    desirable_weight: Annotated[float | Literal["auto"], auto_or_number(above=0)] = Field(
        default="auto",
        description="KTO: weight of the thumbs-up answers' loss; `auto` balances it against the "
        "thumbs-down ones (the KTO paper's rule: up x weight within 1 to 4/3 of down x "
        "undesirable_weight).",
    )
    undesirable_weight: float = Field(
        default=1.0, gt=0, description="KTO: weight of the thumbs-down answers' loss."
    )

    def beta_for(self, method: str) -> float:
        """The beta this method trains with: the recipe's, or the method's paper value."""
        return self.beta if self.beta is not None else DEFAULT_BETA.get(method, 0.1)


# the rewards GRPO has built in (train.rewards); anything else is `module:function`
BUILTIN_REWARDS: dict[str, str] = {
    "json_schema": "1 when the answer is JSON meeting the prompt's response_format (or "
    "grpo.response_format; any JSON object without either), 0.5 when it is JSON that does not, "
    "0.25 when a JSON object sits inside it (a code fence, prose around it), else 0",
    "must_include": "the share of the prompt's must_include phrases the answer holds "
    "(case-insensitive)",
    "must_not_include": "0 when the answer holds one of the prompt's or grpo.must_not_include's "
    "phrases, else 1",
    "not_empty": "0 for an empty answer, else 1",
    "no_repetition": "0 for an answer that ends in a loop (the gateway's repetition check), else 1",
    "no_refusal": "0 for an answer holding a refusal phrase (grpo.refusal), else 1",
    "length": "1 up to grpo.max_words words, then falling to 0 at twice that",
}


def rewards_reference_markdown() -> str:
    """The built-in rewards table of docs/train.md, generated from BUILTIN_REWARDS."""
    rows = [f"| `{name}` | {what} |" for name, what in BUILTIN_REWARDS.items()]
    return "\n".join(["| reward | score of one answer |", "|---|---|", *rows])


class GrpoSection(StrictModel):
    """Reinforcement learning with programmatic rewards (`method: grpo`): several answers to each
    prompt are sampled, scored, and each is pushed up or down by how it compares with its group."""

    rewards: list[str] = Field(
        default_factory=lambda: ["must_include"],
        min_length=1,
        description="Reward functions, summed: built-in ones ("
        + ", ".join(BUILTIN_REWARDS)
        + "), a reward model `reward:RUN` (a run of method: reward; its score), or "
        "`module:function` (called with prompts, completions and the prompt file's columns as "
        "keyword lists; returns one float per completion).",
    )
    reward_weights: list[float] | None = Field(
        default=None, description="Weight of each reward (default: 1 each)."
    )
    num_generations: int = Field(
        default=4, ge=2, description="Answers sampled per prompt (the group compared)."
    )
    max_completion_len: int = Field(
        default=128, ge=1, description="Tokens per sampled answer at most."
    )
    temperature: float = Field(
        default=1.0, gt=0, description="Sampling temperature of the answers."
    )
    beta: float = Field(
        default=0.0,
        ge=0,
        description="KL pull towards the starting model (0 = none, and no reference forward; "
        "DeepSeek-R1 used 0.001).",
    )
    response_format: dict[str, Any] | None = Field(
        default=None,
        description="An OpenAI response_format (json_object or json_schema) for prompts without "
        "their own; the json_schema reward checks answers against it.",
    )
    must_not_include: list[str] = Field(
        default_factory=list,
        description="Phrases the must_not_include reward penalises in every answer.",
    )
    refusal: list[str] = Field(
        default_factory=lambda: ["I'm sorry", "I cannot", "I can't help", "As an AI"],
        description="Phrases the no_refusal reward penalises (case-insensitive).",
    )
    max_words: int = Field(default=120, ge=1, description="The length reward's limit, in words.")

    @field_validator("rewards")
    @classmethod
    def _known_rewards(cls, rewards: list[str]) -> list[str]:
        for index, name in enumerate(rewards):
            reward_model = name.startswith("reward:") and len(name) > len("reward:")
            if name not in BUILTIN_REWARDS and not reward_model and not _is_import_path(name):
                raise ValueError(
                    f"{name!r} (entry {index}) is not a built-in reward ("
                    + ", ".join(BUILTIN_REWARDS)
                    + "), a reward model (`reward:RUN`) or a `module:function`"
                )
        return rewards

    @model_validator(mode="after")
    def _check_weights(self) -> GrpoSection:
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError(
                f"reward_weights: {len(self.reward_weights)} weights for "
                f"{len(self.rewards)} rewards (give one per reward)"
            )
        return self


def _is_import_path(text: str) -> bool:
    module, _, function = text.partition(":")
    parts = [*module.split("."), function]
    return bool(function) and all(part.isidentifier() for part in parts)


class PreferenceSection(StrictModel):
    """`slm run`: DPO after SFT on preference pairs (skipped when `data` is empty)."""

    data: list[str] = Field(
        default_factory=list,
        description="Preference files (prompt/chosen/rejected) or a dataset_info folder; relative to the recipe.",
    )
    names: list[str] | None = Field(
        default=None, description="Dataset names to pick from dataset_info.json."
    )
    lr: float = Field(
        default=5e-5, gt=0, le=1.0, description="Peak learning rate of the DPO stage."
    )
    epochs: float = Field(default=1.0, gt=0, description="Passes over the preference pairs.")
    max_steps: int = Field(
        default=-1, description="Stop the DPO stage after this many steps (-1 = use epochs)."
    )


class InitSection(StrictModel):
    """Start from pretrained weights or from a random init (the tiny from-scratch path)."""

    mode: Literal["pretrained", "random"] = Field(
        default="pretrained",
        description="`random` builds a fresh Llama with the model's tokenizer (use method: pt).",
    )
    size: Literal["nano", "micro", "tiny", "small"] = Field(
        default="tiny",
        description="Size preset for `mode: random`: nano≈1M, micro≈5M, tiny≈20M, small≈60M params (+embeddings).",
    )


SIZE_PRESETS: dict[str, dict[str, int]] = {
    "nano": {
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "micro": {
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "tiny": {
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
    },
    "small": {
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
    },
}


def resolve_data_paths(paths: list[str], base: Path) -> list[Path]:
    """Data paths as absolute paths; relative ones are taken from the recipe's folder, then the cwd."""
    out = []
    for text in paths:
        path = Path(text).expanduser()
        if not path.is_absolute():
            near_recipe = base / path
            path = near_recipe if near_recipe.exists() else Path.cwd() / path
        out.append(path.resolve())
    return out
