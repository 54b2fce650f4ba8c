"""Errors of the export stage: each names what is wrong and what to do (the CLI exits 2)."""

from __future__ import annotations

from slmkit.errors import SlmError


class ExportError(SlmError):
    """Export cannot go on (bad source, failed tool run)."""


class AdapterNotMergeableError(ExportError):
    """The adapter cannot be merged or served as is (found before any work is done)."""


class GgufCheckError(ExportError):
    """A GGUF file's metadata disagrees with the tokenizer / config it was converted from."""


class ParityError(ExportError):
    """The f16 GGUF answers differ from base+adapter in PyTorch beyond the threshold."""
