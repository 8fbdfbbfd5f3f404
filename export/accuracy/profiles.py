"""Tolerance profiles per precision. Tensor tolerances are elementwise |a-b| <= atol +
rtol |ref|; task limits are what a 4D-vision user would notice."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Profile:
    name: str
    atol: float
    rtol: float
    max_rotation_deg: float
    max_translation_dir_deg: float
    max_depth_absrel: float
    min_depth_delta125: float
    per_output: dict[str, tuple[float, float]] = field(default_factory=dict)

    def tol(self, output: str) -> tuple[float, float]:
        return tuple(self.per_output.get(output, (self.atol, self.rtol)))  # type: ignore

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "fp32": Profile("fp32", 1e-3, 1e-3, 0.05, 0.05, 1e-3, 0.999),
    "fp16": Profile("fp16", 5e-2, 5e-2, 1.0, 1.0, 2e-2, 0.99),
    "int8": Profile("int8", 2e-1, 2e-1, 5.0, 5.0, 1e-1, 0.9),
}


def precision_of(backend: str) -> str:
    for p in ("int8", "fp16"):
        if p in backend:
            return p
    return "fp32"


def load_profiles(override: str | Path | None = None) -> dict[str, Profile]:
    """Defaults, optionally overridden by a JSON {"fp16": {"atol": ..., ...}, ...}."""
    profiles = {k: Profile(**v.to_dict()) for k, v in PROFILES.items()}
    if override:
        data = json.loads(Path(override).read_text())
        for name, fields in data.items():
            base = profiles.get(name, PROFILES["fp32"]).to_dict()
            base.update(fields, name=name)
            profiles[name] = Profile(**base)
    return profiles
