"""Command-line arguments, data and exit codes shared by the examples.

Exit codes as `kernal trainer`'s: 0 done (`--versions N` trained and
acknowledged, or Ctrl-C), 2 refused by the hub for good (bad token, revoked,
unknown model, an update larger than the hub takes: `TrainerRefused`), 1
other errors (the hub could not be reached: `HubUnreachable`).
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernal_trainer import HubUnreachable, Trainer, TrainerRefused
from kernal_trainer.data import load_csv, only_classes, split

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "data" / "wine.csv"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--hub", default="ws://127.0.0.1:5001")
    p.add_argument("--name", required=True)
    p.add_argument("--specialty", default=None, help="default: named after --classes (classes-0-1)")
    p.add_argument("--token", required=True)
    p.add_argument("--model", default="wine")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="CSV: features..., label")
    p.add_argument("--classes", default="", help="keep only these classes, e.g. 0,1")
    p.add_argument("--versions", type=int, default=None, help="stop after training on this many versions (exit 0)")
    p.add_argument("--compress", choices=["f16", "bf16"], default=None, help="send deltas in 16 bits")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="one JSON event per line")
    return p


def classes(arg: str):
    return [int(c) for c in arg.split(",") if c.strip()]


def specialty(args) -> str:
    """`--specialty`, or a name for the classes this member holds."""
    if args.specialty:
        return args.specialty
    keep = classes(args.classes)
    return "classes-" + "-".join(str(c) for c in keep) if keep else "all-classes"


def own_scaling(rows):
    """Scaling by this file's own statistics (train and test together), what
    `kernal trainer --data` does on a model without normalisation."""
    mean = rows.mean(axis=0)
    std = rows.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return lambda x: ((x - mean) / std).astype(np.float32)


@dataclass
class Data:
    """Training rows of this member's classes; its own classes' test rows
    (its specialty) and every test row (global)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_test_all: np.ndarray
    y_test_all: np.ndarray


def evaluation(logits_of, d: Data) -> dict:
    """The federated evaluation the examples report: accuracy on this
    member's own classes (`specialty_accuracy`) and on every class
    (`global_accuracy`, with the loss and count of those rows).
    `logits_of(x_raw)` gives the model's outputs for raw inputs."""
    own = np.asarray(logits_of(d.x_test))
    every = np.asarray(logits_of(d.x_test_all))
    z = every - every.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    y = d.y_test_all
    return {
        "specialty_accuracy": float((own.argmax(axis=1) == d.y_test).mean()) if len(d.y_test) else None,
        "global_accuracy": float((every.argmax(axis=1) == y).mean()),
        "loss": float(-logp[np.arange(len(y)), y].mean()),
        "num_examples": int(len(y)),
    }


def load(args) -> Data:
    """The CSV split 80/20, keeping only `--classes` (a member's specialty)."""
    x, y = load_csv(args.data)
    x_train, y_train, x_all, y_all = split(x, y)
    keep = classes(args.classes)
    x_train, y_train = only_classes(x_train, y_train, keep)
    x_test, y_test = only_classes(x_all, y_all, keep)
    return Data(x_train, y_train, x_test, y_test, x_all, y_all)


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
        args.hub, args.name, specialty(args), args.token,
        model=args.model, train=train, evaluate=evaluate, features=data.x_train,
        max_versions=args.versions, json_events=args.json, compress=args.compress,
        on_event=None if args.json else lambda e: print(e, file=sys.stderr),
    )
    return exit_code(trainer.run, args)


def exit_code(run, args) -> int:
    """Runs `run()` and turns its end into the documented exit code, with
    the reason on stderr instead of a traceback."""
    try:
        s = run()
    except TrainerRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except HubUnreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0 if s.acked > 0 or args.versions == 0 else 1
