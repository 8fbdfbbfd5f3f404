"""Loading real checkpoints (Pi3, PAGE-4D / VGGT-1B, the seed prototype) into VGGT_MV, with a
report of where every tensor came from. See loader.py for the three-stage rule."""
from .loader import (CheckpointInspection, LoadError, LoadReport, SourceReport, Stage3Entry,
                     inspect_checkpoint, load_weights, plan_load, slot_for_kind)
from .mapping import Entry, group_of, map_name, plan_source
from .sources import (KINDS, CheckpointError, CheckpointLike, CheckpointSource, ManifestSource, detect_kind,
                      open_checkpoint, sha256_file)

__all__ = [
    "CheckpointError", "CheckpointInspection", "CheckpointLike", "CheckpointSource", "Entry", "KINDS",
    "LoadError", "LoadReport", "ManifestSource", "SourceReport", "Stage3Entry", "detect_kind",
    "group_of", "inspect_checkpoint", "load_weights", "map_name", "open_checkpoint",
    "plan_load", "plan_source", "sha256_file", "slot_for_kind",
]
