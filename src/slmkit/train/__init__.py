"""Training: SFT / DPO / continued pretraining on transformers + peft + trl, resumable and diagnosed.

Entry point: `slmkit.train.run.train(recipe)`; the CLI is in `commands.py`.
"""
