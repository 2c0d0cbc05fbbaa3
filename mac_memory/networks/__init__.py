"""The MAC networks, one file each: amortization, aggregation, modulation → prefix."""

from .aggregator import Aggregated, AggregationNetwork
from .amortizer import Amortizer, EncoderAmortizer, KVAnchoredAmortizer, Seq2SeqAmortizer, build_amortizer
from .modulation import PrefixProjector

__all__ = [
    "Aggregated",
    "AggregationNetwork",
    "Amortizer",
    "EncoderAmortizer",
    "KVAnchoredAmortizer",
    "PrefixProjector",
    "Seq2SeqAmortizer",
    "build_amortizer",
]
