"""VGGT_MV: VGGT / PAGE-4D for synchronized multi-view video, written to export cleanly."""
from .config import VGGTMVConfig, get_config, tiny_config

__version__ = "0.1.0"


def __getattr__(name):
    # The model pulls in every layer and head; keep `import vggt_mv` light for tools
    # that only need configs.
    if name == "VGGTMV":
        from .models.vggt_mv import VGGTMV
        return VGGTMV
    raise AttributeError(name)


__all__ = ["VGGTMV", "VGGTMVConfig", "get_config", "tiny_config", "__version__"]
