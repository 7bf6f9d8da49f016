"""A Python trainer for a kernal hub (protocol version 2, docs/PROTOCOL.md)."""

from .normalisation import FeatureStats, Normalisation
from .client import Trainer, Summary, TrainerRefused, PROTOCOL_VERSION

__all__ = [
    "Trainer",
    "Summary",
    "TrainerRefused",
    "FeatureStats",
    "Normalisation",
    "PROTOCOL_VERSION",
]
