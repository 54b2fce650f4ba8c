"""The answer-token loss: logits only where a label exists, same loss and gradients as the full one."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from slmkit.data.packing import PackedBatchCollator, PaddingCollator, pack_samples
from slmkit.data.template import TokenizedSample
from slmkit.train.sft import answer_token_loss


def _samples(lengths: list[int], seed: int = 0) -> list[TokenizedSample]:
    rng = random.Random(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = [rng.randrange(3, 200) for _ in range(n)]
        answer_from = n // 2  # the second half is the "answer"
        labels = [-100] * answer_from + ids[answer_from:]
        out.append(TokenizedSample(ids, labels, f"f.jsonl:{i + 1}"))
    return out


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir: Path) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, config).train()


def _loss_and_grads(model: Any, compute: Any) -> tuple[float, dict[str, Any]]:
    model.zero_grad()
    loss = compute()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


@pytest.mark.parametrize("packed", [False, True])
def test_answer_token_loss_equals_the_full_loss_and_gradients(
    lora_model: Any, packed: bool
) -> None:
    import torch

    samples = _samples([9, 14, 6, 11], seed=1)
    if packed:
        batch = PackedBatchCollator(pad_token_id=0, flatten=True)(pack_samples(samples, 64))
    else:
        batch = PaddingCollator(pad_token_id=0)(samples)
    assert int((batch["labels"] != -100).sum()) < batch["labels"].numel() // 2 + 4
    full, full_grads = _loss_and_grads(lora_model, lambda: lora_model(**batch).loss)
    result = answer_token_loss(lora_model, batch)
    assert result is not None and result[1] is False  # a per-batch mean

    ours, our_grads = _loss_and_grads(lora_model, lambda: answer_token_loss(lora_model, batch)[0])
    assert ours == pytest.approx(full, rel=1e-5)
    assert full_grads.keys() == our_grads.keys() and len(our_grads) > 4
    for name, grad in full_grads.items():
        torch.testing.assert_close(our_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_a_given_item_count_normalises_over_the_accumulated_batch(lora_model: Any) -> None:
    import torch

    batch = PaddingCollator(pad_token_id=0)(_samples([8, 10], seed=2))
    answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        mean, scaled = answer_token_loss(lora_model, batch)  # type: ignore[misc]
        summed, is_scaled = answer_token_loss(  # type: ignore[misc]
            lora_model, batch, torch.tensor(answer_tokens * 3)
        )
    assert not scaled and is_scaled
    assert float(summed) == pytest.approx(float(mean) / 3, rel=1e-5)


def test_a_model_without_logits_to_keep_falls_back_to_the_full_loss() -> None:
    import torch

    class Plain(torch.nn.Module):
        def forward(self, input_ids: Any, labels: Any = None) -> Any:
            raise AssertionError("not called")

    batch = PaddingCollator(pad_token_id=0)(_samples([5]))
    assert answer_token_loss(Plain(), batch) is None
    assert answer_token_loss(Plain(), {"input_ids": batch["input_ids"]}) is None
