"""PyTorch state_dicts to and from the hub's tensors.

Naming convention: the hub's tensor names are the `state_dict` keys of the
module, with the same shapes and dtypes (0-d tensors such as BatchNorm's
int64 `num_batches_tracked` included). The hub's built-in MLP is

    fc1.weight [hidden, inputs]   fc1.bias [hidden]
    fc2.weight [classes, hidden]  fc2.bias [classes]

which is exactly a module with `fc1 = nn.Linear(inputs, hidden)` and
`fc2 = nn.Linear(hidden, classes)` (ReLU between them). A model created from
uploaded safetensors (`safetensors.torch.save(module.state_dict())`) keeps
whatever names, shapes and dtypes it was uploaded with.
"""

from typing import Dict

import numpy as np


def _numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: exact as float32
        t = t.to(torch.float32)
    return t.numpy().copy()


def state_dict_to_weights(state_dict) -> Dict[str, np.ndarray]:
    """A module's state_dict as arrays of each tensor's dtype and shape
    (bfloat16 as float32) keyed by tensor name."""
    return {k: _numpy(v) for k, v in state_dict.items()}


def load_weights(module, weights: Dict[str, np.ndarray]) -> None:
    """Loads the hub's weights into `module` (names and shapes must match;
    each value converted to the module's own dtype)."""
    import torch

    own = module.state_dict()
    module.load_state_dict(
        {
            k: torch.from_numpy(np.array(v)).to(own[k].dtype) if k in own else torch.from_numpy(np.array(v))
            for k, v in weights.items()
        },
        strict=True,
    )


def delta(module, weights: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """`trained - weights` for every tensor of the model: floats in float32
    (float64 for float64 tensors), integers and bools as int64 counts."""
    trained = state_dict_to_weights(module.state_dict())
    out = {}
    for k, w in weights.items():
        t, w = np.asarray(trained[k]), np.asarray(w)
        if t.dtype.kind in "iub" or w.dtype.kind in "iub":
            out[k] = t.astype(np.int64) - w.astype(np.int64)
        else:
            wide = np.float64 if np.float64 in (t.dtype, w.dtype) else np.float32
            out[k] = t.astype(wide) - w.astype(wide)
    return out


def download(hub: str, model: str, version="latest"):
    """`version` (a number or "latest") of `model` from the hub as a PyTorch
    state_dict (name -> tensor of its dtype and shape, bfloat16 included),
    ready for `module.load_state_dict(..., strict=True)`."""
    from safetensors.torch import load

    from .download import download_bytes

    _, body = download_bytes(hub, model, version)
    return load(body)


#: Tensors a checkpoint of a model with frozen input normalisation carries
#: besides the model's own (the mean and deviation to apply to raw inputs).
NORMALISATION_TENSORS = ("normalisation.mean", "normalisation.std")


def load_version(module, hub: str, model: str, version="latest", strict: bool = True):
    """Loads a version from the hub into `module` with `strict=True` (every
    tensor in its dtype; a floating tensor converted to the module's own
    floating dtype if it differs) and returns the module. The checkpoint's
    `normalisation.mean`/`.std` (see `download`) are left out unless the
    module has tensors of those names."""
    import torch

    own = module.state_dict()
    state = {
        k: v.to(own[k].dtype) if k in own and torch.is_floating_point(own[k]) else v
        for k, v in download(hub, model, version).items()
        if k in own or k not in NORMALISATION_TENSORS
    }
    module.load_state_dict(state, strict=strict)
    return module
