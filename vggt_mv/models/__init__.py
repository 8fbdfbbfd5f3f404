from .aggregator import Aggregator
from .vggt_mv import InputError, VGGTMV

__all__ = ["Aggregator", "VGGTMV", "InputError"]
