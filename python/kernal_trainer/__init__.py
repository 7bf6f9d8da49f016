"""A Python trainer for a kernal hub (protocol version 2, docs/PROTOCOL.md).

`Trainer` is the low-level API (a function from the version's weights to a
delta); `TorchTrainer` (in `kernal_trainer.torch_trainer`, needs PyTorch)
trains a module; `download` fetches a version's weights; `Evaluator`
scores each new version on held-out data and reports it to the hub.
"""

from ._version import __version__
from .client import PROTOCOL_VERSION, Summary, Trainer
from .download import download
from .evaluator import Evaluator, EvaluatorSummary
from .errors import HubUnreachable, TrainerRefused
from .normalisation import FeatureStats, Normalisation

__all__ = [
    "Trainer",
    "Summary",
    "Evaluator",
    "EvaluatorSummary",
    "TrainerRefused",
    "HubUnreachable",
    "FeatureStats",
    "Normalisation",
    "PROTOCOL_VERSION",
    "download",
    "__version__",
]


def __getattr__(name):
    # TorchTrainer without importing PyTorch for those who do not use it.
    if name == "TorchTrainer":
        from .torch_trainer import TorchTrainer

        return TorchTrainer
    raise AttributeError(name)
