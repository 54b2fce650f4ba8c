"""Generated text as the client sees it: reasoning split from the answer, each through the output
filter. The same object serves a stream (piece by piece) and a whole answer.

Modes (`reasoning:` in the serve config, or a request's `include_reasoning: false`):
`separate` returns reasoning in `reasoning_content` (DeepSeek's API, vLLM and llama.cpp's server
do the same), `hide` drops it, `raw` leaves the text as generated (`<think>` tags in `content`).
Plain completions (`/v1/completions`) are always raw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slmkit.models.reasoning import ReasoningSplitter
from slmkit.serve.config import OutputFilter
from slmkit.serve.engines.request import ReasoningMode
from slmkit.serve.guards import StreamingFilter


@dataclass
class AnswerText:
    """Splits and filters one answer's text; `feed` for a stream, `whole` for a finished text."""

    mode: ReasoningMode
    output_filter: OutputFilter
    splitter: ReasoningSplitter | None = field(init=False)
    content: StreamingFilter = field(init=False)
    reasoning: StreamingFilter = field(init=False)

    def __post_init__(self) -> None:
        self.splitter = None if self.mode == "raw" else ReasoningSplitter()
        self.content = StreamingFilter(self.output_filter)
        self.reasoning = StreamingFilter(self.output_filter)

    @property
    def redactions(self) -> int:
        return self.content.redactions + self.reasoning.redactions

    def feed(self, text: str) -> tuple[str, str]:
        """(reasoning, content) to send for the next piece of generated text."""
        if self.splitter is None:
            return "", self.content.feed(text)
        thought, said = self.splitter.feed(text)
        return self._reasoning(self.reasoning.feed(thought)), self.content.feed(said)

    def flush(self) -> tuple[str, str]:
        """What is still held back at the end."""
        thought = said = ""
        if self.splitter is not None:
            thought, said = self.splitter.finish()
        thought = self.reasoning.feed(thought) + self.reasoning.flush()
        said = self.content.feed(said) + self.content.flush()
        return self._reasoning(thought), said

    def whole(self, text: str) -> tuple[str | None, str]:
        """(reasoning or None, content) of a finished answer."""
        first = self.feed(text)
        last = self.flush()
        content = first[1] + last[1]
        if self.splitter is None or not self.splitter.inside:
            return None, content
        if self.mode == "hide":
            return None, content.strip()
        return (first[0] + last[0]).strip(), content.strip()

    def _reasoning(self, text: str) -> str:
        return "" if self.mode == "hide" else text
