"""export/: PyTorch VGGT_MV -> bucketed ONNX (portable + plugin graphs), validated on the CPU.

Submodules import torch / onnx lazily so `import export` stays cheap.
"""
from .buckets import Bucket, BucketError, make_buckets, parse_int_list

__all__ = ["Bucket", "BucketError", "make_buckets", "parse_int_list"]
