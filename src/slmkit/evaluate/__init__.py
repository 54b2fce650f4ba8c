"""Evaluation: eval sets, metrics, model comparisons (base / tuned / quantized), reports."""

from slmkit.evaluate.config import Criteria, EvalConfig, EvalSettings, ModelSpec

__all__ = ["Criteria", "EvalConfig", "EvalSettings", "ModelSpec"]
