"""Scoring answers with a reward model: a run of `slm train` with method: reward (the base with a
score head, trained so that chosen answers score above rejected ones). Used as a judge by
`slm eval --judge reward:RUN` and as a reward by GRPO (`grpo.rewards: [reward:RUN]`).

A conversation is rendered as training rendered its pairs: the prompt as inference renders it,
then the answer as the model would write it (`data.template.reply_ids`).
"""

from __future__ import annotations

from typing import Any

from slmkit.errors import ModelNotFoundError
from slmkit.models.load import _source, is_reward_model, load_tokenizer, quiet_transformers
from slmkit.models.resolve import resolve_model

PREFIX = "reward:"


class RewardModel:
    """A loaded reward model: `score` gives one number per (conversation + answer)."""

    def __init__(self, model: Any, tokenizer: Any, ref: str) -> None:
        self.model, self.tokenizer, self.ref = model, tokenizer, ref

    @classmethod
    def load(cls, ref: str) -> RewardModel:
        import torch
        from transformers import AutoModelForSequenceClassification

        quiet_transformers()
        resolved = resolve_model(ref.removeprefix(PREFIX))
        if not is_reward_model(resolved):
            raise ModelNotFoundError(
                f"{ref}: not a reward model (a run folder of `slm train` with method: reward)"
            )
        tokenizer = load_tokenizer(resolved)
        source, kwargs = _source(resolved)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=1, dtype=torch.float32, **kwargs
        )
        if resolved.adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(resolved.adapter))
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        model.eval()
        return cls(model, tokenizer, ref)

    def token_ids(self, messages: list[dict[str, Any]], answer: str) -> list[int]:
        from slmkit.data.template import ChatRenderer, reply_ids, resolve_chat_template

        renderer = ChatRenderer(self.tokenizer, resolve_chat_template(self.tokenizer, None))
        prompt, reply = reply_ids(
            [*messages, {"role": "assistant", "content": answer}], None, renderer
        )
        return [*prompt, *reply]

    def score(
        self, conversations: list[list[dict[str, Any]]], answers: list[str], batch: int = 8
    ) -> list[float]:
        """The reward of each answer to its conversation (higher is better)."""
        import torch

        sequences = [self.token_ids(m, a) for m, a in zip(conversations, answers, strict=True)]
        pad = self.tokenizer.pad_token_id or 0
        scores: list[float] = []
        for start in range(0, len(sequences), batch):
            chunk = sequences[start : start + batch]
            width = max(len(s) for s in chunk)
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in chunk])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk])
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits
            scores.extend(float(v) for v in logits[:, 0])
        return scores
