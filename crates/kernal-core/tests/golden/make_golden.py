"""Writes golden.safetensors with Python's reference safetensors writer.

Run once (safetensors 0.8.0, numpy); the file is committed and
tests/golden.rs checks kernal's own encoder against it byte for byte:

    python make_golden.py

The tensors are named in the order the reference writer lays them out
(dtype, then name), so the same layout in kernal gives the same offsets.
"""

import numpy as np
from safetensors.numpy import save_file

tensors = {
    "fc1.bias": (np.arange(3, dtype=np.float32) * 0.25 - 0.5),
    "fc1.weight": (np.arange(6, dtype=np.float32).reshape(3, 2) * 0.5 - 1.0),
    "fc2.bias": np.array([1e-3, -2.5], dtype=np.float32),
    "fc2.weight": (np.arange(6, dtype=np.float32).reshape(2, 3) / 3.0),
}
save_file(tensors, "golden.safetensors", metadata={"version": "7"})
