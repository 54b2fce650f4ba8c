"""ORPO and SimPO: preference pairs without a reference model.

Both score an answer by the mean log-probability of its tokens under the policy alone, so a step
is one forward pass over the pair where DPO needs two (policy and reference): cheaper on a CPU.

- ORPO (Hong et al., 2024): the chosen answer's NLL plus beta (lambda) times the odds-ratio loss
  -log sigmoid(log odds(chosen) - log odds(rejected)), odds(y) = p(y) / (1 - p(y)). It needs no
  SFT stage before it.
- SimPO (Meng et al., 2024): -log sigmoid(beta * (mean logp(chosen) - mean logp(rejected)) - gamma),
  optionally plus `dpo.ftx` times the chosen answers' NLL (CPO-SimPO).

The pairs arrive tokenized by our data layer, as for DPO (`train.dpo.pretokenized`); only the loss
of TRL's DPOTrainer is replaced.
"""

from __future__ import annotations

from typing import Any

# keys of a DPO batch that are not model inputs
_NOT_MODEL_INPUTS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps"})


def pair_losses(
    method: str, chosen: Any, rejected: Any, beta: float, gamma: float
) -> tuple[Any, dict[str, Any]]:
    """Per-pair preference losses from the answers' mean token log-probs, and what to log."""
    import torch.nn.functional as F

    if method == "orpo":
        log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
        return -beta * F.logsigmoid(log_odds), {"log_odds_ratio": log_odds}
    if method == "simpo":
        return -F.logsigmoid(beta * (chosen - rejected) - gamma), {}
    raise ValueError(f"not a reference-free method: {method!r}")


def _log1mexp(logp: Any) -> Any:
    """log(1 - exp(logp)) for logp < 0, accurate near 0 and near -inf. A certain answer (logp
    rounded to 0) is held just below 0: both branches are evaluated, and log(0) would turn the
    gradient into NaN."""
    import math

    import torch

    logp = logp.clamp(max=-1e-6)
    return torch.where(
        logp > -math.log(2), torch.log(-torch.expm1(logp)), torch.log1p(-torch.exp(logp))
    )


def reference_free(trainer_class: Any, method: str, beta: float, gamma: float, ftx: float) -> Any:
    """`trainer_class` (a DPOTrainer) training with the ORPO or SimPO loss instead of DPO's."""

    class ReferenceFreeTrainer(trainer_class):  # type: ignore[misc, valid-type]
        def _compute_loss(self, model: Any, inputs: Any, return_outputs: bool) -> Any:
            mode = "train" if self.model.training else "eval"
            completion = inputs["completion_mask"]
            mask = completion[..., 1:]
            labels = inputs["input_ids"].masked_fill(completion == 0, -100)
            kwargs = {k: v for k, v in inputs.items() if k not in _NOT_MODEL_INPUTS}
            outputs = model(**kwargs, use_cache=False, labels=labels, fused_lm_head=True)
            per_token = outputs.log_probs[:, -mask.size(1) :] * mask
            lengths = mask.sum(dim=1).clamp(min=1)
            mean_logps = per_token.sum(dim=1) / lengths
            chosen, rejected = mean_logps.chunk(2, dim=0)  # the batch is [chosen..., rejected...]
            losses, extra = pair_losses(method, chosen, rejected, beta, gamma)
            chosen_mask, _ = mask.chunk(2, dim=0)
            nll = -per_token.chunk(2, dim=0)[0].sum() / chosen_mask.sum().clamp(min=1)
            loss = losses.mean()
            if method == "orpo":
                loss = loss + nll
            elif ftx:
                loss = loss + ftx * nll
            self._log_pair(mode, chosen.detach(), rejected.detach(), nll.detach(), extra)
            return (loss, outputs) if return_outputs else loss

        def _log_pair(self, mode: str, chosen: Any, rejected: Any, nll: Any, extra: dict) -> None:
            gather = self.accelerator.gather_for_metrics
            rewards_chosen, rewards_rejected = beta * chosen, beta * rejected
            values = {
                "rewards/chosen": rewards_chosen,
                "rewards/rejected": rewards_rejected,
                "rewards/margins": rewards_chosen - rewards_rejected,
                "rewards/accuracies": (rewards_chosen > rewards_rejected).float(),
                "logps/chosen": chosen,
                "logps/rejected": rejected,
                "nll_loss": nll.reshape(1),
                **{key: value.detach() for key, value in extra.items()},
            }
            for key, value in values.items():
                self._metrics[mode][key].append(gather(value).mean().item())

    ReferenceFreeTrainer.__name__ = f"{method.upper()}Trainer"
    return ReferenceFreeTrainer
