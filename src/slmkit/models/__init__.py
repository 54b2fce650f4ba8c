"""Model references -> local paths; the embedded default model; loading and chat."""

from slmkit.models.resolve import ResolvedModel, available_models, resolve_model

__all__ = ["ResolvedModel", "available_models", "resolve_model"]
