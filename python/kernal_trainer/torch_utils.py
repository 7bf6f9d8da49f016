"""PyTorch state_dicts to and from the hub's tensors.

Naming convention: the hub's tensor names are the `state_dict` keys of the
module, with the same shapes. The hub's built-in MLP is

    fc1.weight [hidden, inputs]   fc1.bias [hidden]
    fc2.weight [classes, hidden]  fc2.bias [classes]

which is exactly a module with `fc1 = nn.Linear(inputs, hidden)` and
`fc2 = nn.Linear(hidden, classes)` (ReLU between them). A model created from
uploaded safetensors uses whatever names it was uploaded with.
"""

from typing import Dict

import numpy as np


def state_dict_to_weights(state_dict) -> Dict[str, np.ndarray]:
    """A module's state_dict as float32 arrays keyed by tensor name."""
    return {
        k: v.detach().cpu().numpy().astype(np.float32, copy=True)
        for k, v in state_dict.items()
    }


def load_weights(module, weights: Dict[str, np.ndarray]) -> None:
    """Loads the hub's weights into `module` (names and shapes must match)."""
    import torch

    own = module.state_dict()
    module.load_state_dict(
        {
            k: torch.from_numpy(np.array(v, dtype=np.float32)).to(own[k].dtype)
            if k in own
            else torch.from_numpy(np.array(v, dtype=np.float32))
            for k, v in weights.items()
        },
        strict=True,
    )


def delta(module, weights: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """`trained - weights` for every tensor of the model."""
    trained = state_dict_to_weights(module.state_dict())
    return {k: trained[k] - weights[k] for k in weights}


def download(hub: str, model: str, version="latest"):
    """`version` (a number or "latest") of `model` from the hub as a PyTorch
    state_dict (name -> tensor), ready for `module.load_state_dict`."""
    import torch

    from .download import download as download_arrays

    return {k: torch.from_numpy(np.array(v)) for k, v in download_arrays(hub, model, version).items()}


#: Tensors a checkpoint of a model with frozen input normalisation carries
#: besides the model's own (the mean and deviation to apply to raw inputs).
NORMALISATION_TENSORS = ("normalisation.mean", "normalisation.std")


def load_version(module, hub: str, model: str, version="latest", strict: bool = True):
    """Loads a version from the hub into `module` (each tensor converted to
    the dtype the module's own has) and returns the module. The checkpoint's
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
