"""What an engine is asked to generate: one request, engine-independent, built by the gateway
from an OpenAI body (`serve/protocol.py`) after its guards ran."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

ReasoningMode = Literal["separate", "hide", "raw"]


@dataclass
class GenerationRequest:
    """What an engine is asked to do, after guards have been applied."""

    model_id: str
    messages: list[dict[str, Any]] | None  # chat
    prompt: str | None  # plain completion
    max_tokens: int
    stream: bool
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None
    passthrough: dict[str, Any] = field(default_factory=dict)  # response_format, tools, ...
    replica: str | None = None  # set by a ReplicaPool: the replica that answered (audit log)
    version: str | None = None  # set by an A/B split or a registry alias: the version that answered
    user: str | None = None  # the request's `user`: an A/B split with `sticky: user` keys on it
    avoid: set[str] = field(default_factory=set)  # "model:replica" that failed this request
    source: str | None = None  # "monitor" for the drift monitor's probes (not counted as users')
    reasoning: ReasoningMode = (
        "raw"  # how the answer's reasoning reaches the client (serve/answer_text.py)
    )

    @property
    def deterministic(self) -> bool:
        return self.temperature == 0 or self.seed is not None

    def cache_key(self, version: str | None = None) -> str:
        """The response cache's key: what decides the answer, and the model version answering
        (an alias moves to another version on promotion; a cached answer must not outlive it)."""
        payload = {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("stream", "replica", "version", "user", "avoid", "source")
        }
        payload["served_version"] = version
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
