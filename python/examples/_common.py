"""Command-line arguments shared by the two examples."""

import argparse
from pathlib import Path

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
    import numpy as np

    mean = rows.mean(axis=0)
    std = rows.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return lambda x: ((x - mean) / std).astype(np.float32)
