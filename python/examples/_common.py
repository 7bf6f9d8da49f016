"""Command-line arguments shared by the two examples."""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernal_trainer import Trainer
from kernal_trainer.data import load_csv, only_classes, split

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "data" / "wine.csv"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--hub", default="ws://127.0.0.1:5001")
    p.add_argument("--name", required=True)
    p.add_argument("--specialty", default="python")
    p.add_argument("--token", required=True)
    p.add_argument("--model", default="wine")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="CSV: features..., label")
    p.add_argument("--classes", default="", help="keep only these classes, e.g. 0,1")
    p.add_argument("--versions", type=int, default=None, help="stop after this many")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="one JSON event per line")
    return p


def classes(arg: str):
    return [int(c) for c in arg.split(",") if c.strip()]


def own_scaling(rows):
    """Scaling by this file's own statistics (train and test together), what
    `kernal trainer --data` does on a model without normalisation."""
    mean = rows.mean(axis=0)
    std = rows.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return lambda x: ((x - mean) / std).astype(np.float32)


@dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load(args) -> Data:
    """The CSV split 80/20, keeping only `--classes` (a member's specialty)."""
    x, y = load_csv(args.data)
    x_train, y_train, x_test, y_test = split(x, y)
    keep = classes(args.classes)
    x_train, y_train = only_classes(x_train, y_train, keep)
    x_test, y_test = only_classes(x_test, y_test, keep)
    return Data(x_train, y_train, x_test, y_test)


def run(args, data: Data, make) -> int:
    """Runs a trainer whose learning `make(scaled)` returns as `(train,
    evaluate)`; `scaled(x)` gives raw inputs as the model wants them (its
    shared statistics once frozen; on a model without normalisation, this
    file's own)."""
    own = own_scaling(np.concatenate([data.x_train, data.x_test]))
    trainer = None

    def scaled(x):
        return trainer.normalise(x, fallback=own)

    train, evaluate = make(scaled)
    trainer = Trainer(
        args.hub, args.name, args.specialty, args.token,
        model=args.model, train=train, evaluate=evaluate, features=data.x_train,
        max_versions=args.versions, json_events=args.json,
        on_event=None if args.json else lambda e: print(e, file=sys.stderr),
    )
    s = trainer.run()
    return 0 if s.acked > 0 or args.versions == 0 else 1
