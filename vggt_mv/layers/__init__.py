from .attention_ops import biased_attention, count_sites, sparse_attention
from .block import Attention, Block, LayerScale, Mlp
from .rope import RotaryPositionEmbedding2D, patch_positions

__all__ = ["biased_attention", "sparse_attention", "count_sites", "Attention", "Block",
           "LayerScale", "Mlp", "RotaryPositionEmbedding2D", "patch_positions"]
