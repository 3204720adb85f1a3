"""What every lowering rule receives: the graph being built, the weight table, and the export's
resolved choices."""

from __future__ import annotations

from dataclasses import dataclass

from .builder import GraphBuilder
from .scheme import ExportScheme
from .weights import WeightTable


@dataclass(frozen=True)
class LoweringContext:
    """What a lowering rule reads and writes: the graph builder, the weight table, the scheme."""

    b: GraphBuilder
    weights: WeightTable
    scheme: ExportScheme
