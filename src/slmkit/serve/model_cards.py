"""`GET /v1/models` and `GET /v1/models/{id}`: a card for each served model, route and the
embeddings model; an A/B split lists its versions, a registry alias names the version answering."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slmkit.serve import api_errors
from slmkit.serve.engines.base import Engine


class ModelCards:
    """The model list as OpenAI's clients read it."""

    def __init__(
        self,
        engines: Mapping[str, Engine],
        routes: Mapping[str, Any],
        embeddings_id: str | None,
        created: int,
    ) -> None:
        self.engines = engines
        self.routes = routes
        self.embeddings_id = embeddings_id  # None when no embeddings model is served
        self.created = created

    def listing(self) -> dict[str, Any]:
        data = [self._card(model_id) for model_id in self.engines]
        data += [self._card(route_id, "route") for route_id in self.routes]
        if self.embeddings_id is not None:
            data.append(self._card(self.embeddings_id, "embeddings"))
        return {"object": "list", "data": data}

    def card(self, model_id: str) -> dict[str, Any]:
        if model_id in self.engines:
            return self._card(model_id)
        if model_id in self.routes:
            return self._card(model_id, "route")
        if model_id == self.embeddings_id:
            return self._card(model_id, "embeddings")
        raise api_errors.model_not_found(model_id)

    def _card(self, model_id: str, kind: str | None = None) -> dict[str, Any]:
        engine = kind or self.engines[model_id].kind
        card: dict[str, Any] = {
            "id": model_id,
            "object": "model",
            "created": self.created,
            "owned_by": f"slmkit:{engine}",
        }
        arms = getattr(self.engines.get(model_id), "arm_cards", None) if kind is None else None
        if arms is not None:  # an A/B split: its versions and their weights
            card["versions"] = arms()
        version = getattr(self.engines.get(model_id), "version", None) if kind is None else None
        if isinstance(version, str):  # a registry alias: the version answering now
            card["version"] = version
        return card
