from . import numpy_ref
