"""`slm cost`: the monthly cost of an upstream API, of self-hosting this model, and of a hybrid split."""

from slmkit.cost.config import CostConfig
from slmkit.cost.model import CostModel, CostResult, estimate_cost

__all__ = ["CostConfig", "CostModel", "CostResult", "estimate_cost"]
