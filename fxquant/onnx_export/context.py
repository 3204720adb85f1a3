"""What every lowering rule receives: the graph being built, the weight table, and the export's
choices."""

from __future__ import annotations

from dataclasses import dataclass

from .activation import ActivationPolicy
from .builder import GraphBuilder
from .weights import WeightTable


@dataclass(frozen=True)
class LoweringContext:
    b: GraphBuilder
    weights: WeightTable
    policy: ActivationPolicy
