"""Configuration of routes: a public model id answered by an ordered chain of served models, with
rules that pick the target and checks that escalate a bad answer to the next member.

The models live in `serve/config.py` as `ServeConfig.routes`; the router is `serve/routing.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydantic import Field, field_validator, model_validator

from slmkit.config import StrictModel
from slmkit.serve.model_config import MODEL_ID


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regex {value!r} ({exc})") from exc
    return value


def _check_id(value: str, what: str) -> str:
    if not MODEL_ID.match(value):
        raise ValueError(
            f"{what} must be 1-64 of letters, digits, . _ : - and start with a letter or digit"
        )
    return value


class RouteRule(StrictModel):
    """Sends matching requests straight to one chain member; every condition given must hold."""

    name: str = Field(description="Name of the rule; the audit log's reason is `rule:<name>`.")
    to: str = Field(description="The chain member (a served model id) that answers a match.")
    prompt_tokens_over: int | None = Field(
        default=None,
        ge=0,
        description="Matches prompts longer than this many tokens (context-window fallback).",
    )
    pattern: str | None = Field(
        default=None,
        description="Regex searched in the last user message (chat) or the prompt (completions).",
    )
    metadata: dict[str, str] | None = Field(
        default=None, description="Matches when the request's `metadata` has all these values."
    )
    user: str | None = Field(default=None, description="Regex searched in the request's `user`.")
    header: dict[str, str] | None = Field(
        default=None,
        description="Matches when the request has all these HTTP headers with these values.",
    )

    _check_pattern = field_validator("pattern", "user")(_check_regex)

    @field_validator("name")
    @classmethod
    def _name_is_an_id(cls, value: str) -> str:
        return _check_id(value, "rule name")

    @field_validator("header")
    @classmethod
    def _lower_header_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else {k.lower(): v for k, v in value.items()}

    @model_validator(mode="after")
    def _has_a_condition(self) -> RouteRule:
        if not self.conditions():
            raise ValueError(
                "give at least one condition: prompt_tokens_over, pattern, metadata, user or header"
            )
        return self

    def conditions(self) -> list[str]:
        names = ("prompt_tokens_over", "pattern", "metadata", "user", "header")
        return [n for n in names if getattr(self, n) is not None]


class EscalationChecks(StrictModel):
    """Checks on the answer of a chain member that is not the last; a failed one re-asks the next."""

    empty: bool = Field(
        default=False, description="Escalate an answer with no text and no tool call."
    )
    refusal: list[str] = Field(
        default_factory=list,
        description="Escalate an answer containing one of these phrases (case-insensitive).",
    )
    repetition: bool = Field(
        default=False,
        description="Escalate an answer that fell into a loop (the `repetition` guard's settings); "
        "the loop is not retried locally first.",
    )
    min_mean_logprob: float | None = Field(
        default=None,
        le=0,
        description="Escalate when the mean token log-probability is below this (needs an engine "
        "that gives logprobs, e.g. llama-server); none = off.",
    )
    json_schema: bool = Field(
        default=False,
        description="When `response_format` asks for JSON, escalate an answer that does not parse "
        "or does not meet the schema.",
    )
    must_not_include: list[str] = Field(
        default_factory=list,
        description="Escalate an answer containing one of these phrases (case-insensitive).",
    )

    @property
    def active(self) -> bool:
        """Whether any check is on (a stream through the route is then held until they pass)."""
        return bool(
            self.empty
            or self.refusal
            or self.repetition
            or self.min_mean_logprob is not None
            or self.json_schema
            or self.must_not_include
        )


class Route(StrictModel):
    """A public model id answered by an ordered chain of served models."""

    id: str = Field(description="Model id clients send (listed in /v1/models); not a model's id.")
    chain: list[str] = Field(
        min_length=1,
        description="Served model ids in order: the first answers by default, the next takes over "
        "on escalation or error.",
    )
    rules: list[RouteRule] = Field(
        default_factory=list,
        description="Checked in order; the first that matches picks the member that answers.",
    )
    escalate: EscalationChecks = Field(
        default_factory=lambda: EscalationChecks(),
        description="Checks on a member's answer; a failed one re-asks the next member.",
    )
    fallback_on_error: bool = Field(
        default=True,
        description="An engine error (5xx or 429) of a member also moves to the next member.",
    )

    @field_validator("id")
    @classmethod
    def _id_is_an_id(cls, value: str) -> str:
        return _check_id(value, "route id")

    @model_validator(mode="after")
    def _targets_in_chain(self) -> Route:
        dupes = sorted({m for m in self.chain if self.chain.count(m) > 1})
        if dupes:
            raise ValueError(f"chain lists {', '.join(dupes)} more than once")
        for rule in self.rules:
            if rule.to not in self.chain:
                raise ValueError(
                    f"rule {rule.name!r} sends to {rule.to!r}, which is not in the chain "
                    f"({', '.join(self.chain)})"
                )
        return self


def route_problem(routes: Iterable[Route], model_ids: Iterable[str]) -> str | None:
    """What is wrong between the routes and the served models (one line naming the route and the
    field, to follow `routes: `), or None."""
    served = list(model_ids)
    seen: set[str] = set()
    for route in routes:
        if route.id in served:
            return f"route {route.id!r}: id is also a model id; give the route another id"
        if route.id in seen:
            return f"route {route.id!r}: id used by two routes"
        seen.add(route.id)
        for j, member in enumerate(route.chain):
            if member not in served:
                known = ", ".join(served) or "none"
                return (
                    f"route {route.id!r}: chain.{j} {member!r} is not a served model id "
                    f"(models: {known})"
                )
    return None
