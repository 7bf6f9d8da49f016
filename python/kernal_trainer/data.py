"""CSV files in the `kernal trainer --data` format, for the examples."""

from typing import Optional, Sequence, Tuple

import numpy as np


def load_csv(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Numeric features, integer label in the last column, optional header."""
    rows, labels = [], []
    with open(path) as f:
        for i, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            cells = line.split(",")
            try:
                values = [float(c) for c in cells]
            except ValueError:
                if not rows and i == 0:
                    continue  # header
                raise
            rows.append(values[:-1])
            labels.append(int(values[-1]))
    return np.asarray(rows, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def split(
    x: np.ndarray, y: np.ndarray, test_fraction: float = 0.2, seed: int = 20261123
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic stratified split: (x_train, y_train, x_test, y_test)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    train, test = np.sort(train), np.sort(test)
    return x[train], y[train], x[test], y[test]


def only_classes(
    x: np.ndarray, y: np.ndarray, classes: Optional[Sequence[int]]
) -> Tuple[np.ndarray, np.ndarray]:
    if not classes:
        return x, y
    keep = np.isin(y, list(classes))
    return x[keep], y[keep]
