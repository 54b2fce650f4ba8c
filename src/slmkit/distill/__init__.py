"""Sequence-level distillation: a teacher model's answers to a prompt set become SFT data."""
