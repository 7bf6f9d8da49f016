"""Federated input normalisation, as the hub pools it.

A trainer reports sufficient statistics of its raw training features (a row
count, and per feature a sum and a sum of squares; never rows). The hub pools
every trainer's report and freezes one mean and standard deviation per
feature, which every trainer then applies, so the same raw value means the
same input to everyone.
"""

from dataclasses import dataclass
from typing import List, Optional

import numpy as np


@dataclass
class FeatureStats:
    count: int
    sum: List[float]
    sumsq: List[float]

    @classmethod
    def of(cls, features) -> "FeatureStats":
        """Statistics of a (rows, features) array of raw inputs."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError("features must be a 2-D array (rows, features)")
        return cls(
            count=int(x.shape[0]),
            sum=[float(v) for v in x.sum(axis=0)],
            sumsq=[float(v) for v in (x * x).sum(axis=0)],
        )

    def message(self) -> dict:
        return {"type": "stats", "count": self.count, "sum": self.sum, "sumsq": self.sumsq}


@dataclass
class Normalisation:
    """A model's frozen normalisation: apply it to raw inputs."""

    mean: np.ndarray
    std: np.ndarray
    trainers: int = 0
    count: int = 0

    @classmethod
    def from_wire(cls, n: Optional[dict]) -> Optional["Normalisation"]:
        """The `normalisation` of a `welcome` or `normalisation` message,
        if it is frozen; None for no normalisation or one still pooling."""
        if not n or n.get("state") != "frozen" or n.get("mean") is None:
            return None
        return cls(
            mean=np.asarray(n["mean"], dtype=np.float32),
            std=np.asarray(n["std"], dtype=np.float32),
            trainers=int(n.get("trainers", 0)),
            count=int(n.get("count", 0)),
        )

    def apply(self, features) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        return (x - self.mean) / self.std


def standardise_own(features) -> np.ndarray:
    """Scales a file by its own statistics: what a trainer does on a model
    without normalisation (population std; a constant feature becomes 0)."""
    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return ((x - mean) / std).astype(np.float32)
