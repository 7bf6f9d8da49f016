"""A version's weights from the hub's REST API (no token needed), as
numpy arrays of each tensor's dtype and exact shape (BF16 as float32, numpy
has none); `torch_utils.download` gives them as a PyTorch state_dict with
every dtype, BF16 included."""

import urllib.error
import urllib.request
from typing import Dict, Tuple, Union

import numpy as np

from .client import TRAINER_WS_PATH
from .errors import HubUnreachable, TrainerRefused
from .tensors import decode


def http_url(hub: str) -> str:
    """Whatever the user gave (`host:port`, http(s)://, ws(s)://) as the
    hub's REST base URL."""
    u = hub.rstrip("/")
    if u.endswith(TRAINER_WS_PATH):
        u = u[: -len(TRAINER_WS_PATH)]
    if u.startswith("ws://"):
        u = "http://" + u[len("ws://"):]
    elif u.startswith("wss://"):
        u = "https://" + u[len("wss://"):]
    elif not (u.startswith("http://") or u.startswith("https://")):
        u = "http://" + u
    return u


def download_bytes(hub: str, model: str, version: Union[int, str] = "latest", timeout: float = 60) -> Tuple[int, bytes]:
    """`(version, safetensors bytes)` of a version (a number or "latest")."""
    url = f"{http_url(hub)}/v1/models/{model}/versions/{version}/weights"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read()
            got = int(r.headers.get("x-kernal-version", version if version != "latest" else -1))
            return got, body
    except urllib.error.HTTPError as e:
        code, message = str(e.code), e.reason
        try:
            import json

            err = json.loads(e.read())
            code, message = err.get("code", code), err.get("message", message)
        except Exception:
            pass
        raise TrainerRefused(code, message) from None
    except (urllib.error.URLError, OSError) as e:
        raise HubUnreachable(url, str(getattr(e, "reason", e)), 1) from None


def download(hub: str, model: str, version: Union[int, str] = "latest") -> Dict[str, np.ndarray]:
    """The weights of `version` of `model` as arrays keyed by tensor name,
    each of its tensor's dtype and shape."""
    _, body = download_bytes(hub, model, version)
    return decode(body)
