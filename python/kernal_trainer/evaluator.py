"""The evaluator role: score every new version of a model on your held-out
data with your own code, and report it; the hub records the figures as the
version's hub evaluation (the dashboard charts them like the built-in
models'). An evaluator needs a token an administrator issued
(`POST /v1/models/{m}/evaluators`); it sends no updates.

    ev = Evaluator("127.0.0.1:5001", "wine", "judge", token,
                   evaluate=lambda module: {"accuracy": acc(module), "num_examples": 36},
                   module=net, max_versions=20)
    ev.run()

`evaluate` gets the version loaded into `module` (strict `load_state_dict`,
each tensor in the module's own dtype), or without a module the version's
tensors as numpy arrays (each in the dtype the hub sent). It returns a dict
with any of `accuracy` (0 to 1), `loss` (>= 0), `bits_per_byte` (0 to 64),
`num_examples` (required) and other numbers (named metrics). Errors are the
trainer's: `TrainerRefused` when the hub refuses for good (bad token,
revoked, unknown model), `HubUnreachable` when it was never reached.
"""

import asyncio
import json
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
from safetensors.numpy import load
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from . import errors
from .client import PROTOCOL_VERSION, ws_url
from .errors import HubUnreachable, TrainerRefused
from .normalisation import Normalisation

Weights = Dict[str, np.ndarray]
EvaluateFn = Callable[[Any], Dict[str, Any]]

#: The standard figures of a report; any other number is a named metric.
_FIGURES = ("accuracy", "loss", "bits_per_byte")
#: Tensors a checkpoint of a model with frozen input normalisation carries.
_NORMALISATION_TENSORS = ("normalisation.mean", "normalisation.std")


class _Reconnect(Exception):
    pass


@dataclass
class EvaluatorSummary:
    """`reported`: versions scored and sent; `recorded`: stored by the hub;
    `refused`: reports it refused (`bad_eval`)."""

    reported: int = 0
    recorded: int = 0
    refused: int = 0
    last_version: Optional[int] = None
    last_report: Optional[Dict[str, Any]] = None


def report_message(version: int, figures: Dict[str, Any]) -> Dict[str, Any]:
    """The `evaluator_report` for what `evaluate` returned."""
    if "num_examples" not in figures:
        raise ValueError("evaluate must return `num_examples` (how many held-out examples were scored)")
    msg: Dict[str, Any] = {"type": "evaluator_report", "version": int(version), "num_examples": int(figures["num_examples"])}
    metrics: Dict[str, float] = dict(figures.get("metrics") or {})
    for k, v in figures.items():
        if k in ("num_examples", "metrics") or v is None:
            continue
        if k in _FIGURES:
            msg[k] = float(v)
        else:
            metrics[k] = float(v)
    if metrics:
        msg["metrics"] = {k: float(v) for k, v in metrics.items()}
    return msg


def _load_into(module, weights: Weights) -> None:
    """The version into `module`, strictly, each tensor in the dtype the
    module's own has (a floating tensor) or as the hub sent it."""
    import torch

    own = module.state_dict()
    state = {}
    for k, v in weights.items():
        if k in _NORMALISATION_TENSORS and k not in own:
            continue
        t = torch.from_numpy(np.array(v))
        if k in own and torch.is_floating_point(own[k]):
            t = t.to(own[k].dtype)
        state[k] = t
    module.load_state_dict(state, strict=True)


class Evaluator:
    """One evaluator of one model (see the module's documentation)."""

    def __init__(
        self,
        hub: str,
        model: str,
        name: str,
        token: str,
        *,
        evaluate: EvaluateFn,
        module: Any = None,
        max_versions: Optional[int] = None,
        reconnect: bool = True,
        max_backoff: float = 10.0,
        max_attempts: Optional[int] = None,
        on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
        json_events: bool = False,
        ssl: Any = None,
        give_up_unreached: Optional[int] = 5,
    ):
        self.url = ws_url(hub)
        self.model = model
        self.name = name
        self.token = token
        self._evaluate = evaluate
        self.module = module
        self.max_versions = max_versions
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.max_attempts = max_attempts
        self._on_event = on_event
        self._json_events = json_events
        self._ssl = ssl
        self.give_up_unreached = give_up_unreached
        self.summary = EvaluatorSummary()
        #: The model's frozen input normalisation, or None.
        self.normalisation: Optional[Normalisation] = None
        #: The version being scored (for an `evaluate` that wants it).
        self.version: Optional[int] = None
        self._reached = False
        self._stop = False

    def normalise(self, x, fallback: Optional[Callable] = None) -> np.ndarray:
        """Raw inputs as the model wants them: its frozen normalisation, or
        `fallback(x)`, or `x` unchanged."""
        if self.normalisation is not None:
            return self.normalisation.apply(x)
        if fallback is not None:
            return fallback(x)
        return np.asarray(x, dtype=np.float32)

    def stop(self) -> None:
        """Ends the run after the report in progress."""
        self._stop = True

    def _emit(self, event: str, **fields):
        e = {"event": event, **fields}
        if self._json_events:
            print(json.dumps(e), flush=True)
        if self._on_event is not None:
            self._on_event(e)

    def _done(self) -> bool:
        return self._stop or (self.max_versions is not None and self.summary.recorded >= self.max_versions)

    def run(self) -> EvaluatorSummary:
        """Runs until `max_versions` reports are recorded (or `stop()`)."""
        return asyncio.run(self.run_async())

    async def run_async(self) -> EvaluatorSummary:
        attempt = 0
        while not self._done():
            try:
                await self._session()
                attempt = 0
            except TrainerRefused:
                self._finish()
                raise
            except InvalidURI as e:
                self._finish()
                raise TrainerRefused("bad_url", str(e)) from e
            except (_Reconnect, OSError, ConnectionClosed, InvalidHandshake, asyncio.TimeoutError) as e:
                if not self.reconnect:
                    self._finish()
                    raise
                attempt += 1
                reason = str(e) or type(e).__name__
                if not self._reached and self.give_up_unreached is not None and attempt >= self.give_up_unreached:
                    self._finish()
                    raise HubUnreachable(self.url, reason, attempt) from e
                if self.max_attempts is not None and attempt > self.max_attempts:
                    self._finish()
                    raise ConnectionError(f"{reason} (gave up after {self.max_attempts} attempts)")
                wait = min(0.25 * 2 ** (min(attempt, 10) - 1), self.max_backoff) * random.uniform(0.5, 1.5)
                self._emit("reconnect", attempt=attempt, in_secs=wait, reason=reason)
                await asyncio.sleep(wait)
        return self._finish()

    def _finish(self) -> EvaluatorSummary:
        s = self.summary
        self._emit("done", reported=s.reported, recorded=s.recorded, refused=s.refused)
        return s

    async def _session(self):
        async with connect(self.url, max_size=None, ssl=self._ssl, open_timeout=30, ping_interval=20) as ws:
            self._reached = True
            hello = {
                "type": "hello",
                "protocol": PROTOCOL_VERSION,
                "role": "evaluator",
                "name": self.name,
                "token": self.token,
                "model": self.model,
            }
            await ws.send(json.dumps(hello))
            latest: Optional[Tuple[int, Weights]] = None
            expect_binary: Optional[int] = None
            in_flight = False
            scored = self.summary.last_version
            while True:
                if self._done() and not in_flight:
                    await ws.send(json.dumps({"type": "bye"}))
                    await ws.close()
                    return
                if latest is not None and not in_flight and (scored is None or latest[0] > scored):
                    version, weights = latest
                    msg = await asyncio.to_thread(self._score, version, weights)
                    await ws.send(json.dumps(msg))
                    scored = version
                    in_flight = True
                    self.summary.reported += 1
                    self.summary.last_version = version
                    self.summary.last_report = msg
                    continue
                raw = await ws.recv()
                if isinstance(raw, bytes):
                    if expect_binary is not None:
                        version, expect_binary = expect_binary, None
                        self._emit("version", version=version)
                        if latest is None or version > latest[0]:
                            latest = (version, dict(load(raw)))
                    continue
                m = json.loads(raw)
                t = m.get("type")
                if t in ("welcome", "model"):
                    expect_binary = int(m["version"])
                    if t == "welcome":
                        self._set_normalisation(m.get("normalisation"))
                        self._emit("welcome", evaluator=m["trainer"], model=m["model"], version=expect_binary)
                elif t == "normalisation":
                    self._set_normalisation(m.get("normalisation"))
                elif t == "evaluation_recorded":
                    in_flight = False
                    self.summary.recorded += 1
                    self._emit("reported", version=m["version"], current=m["current"], **{
                        k: v for k, v in (self.summary.last_report or {}).items() if k not in ("type", "version")
                    })
                elif t == "error":
                    code, message, fatal = m["code"], m["message"], m.get("fatal", False)
                    self._emit("error", code=code, message=message, fatal=fatal)
                    if code in ("bad_eval", "internal"):
                        in_flight = False
                        self.summary.refused += 1
                    if errors.action(code) == errors.GIVE_UP:
                        raise TrainerRefused(code, message)
                    if fatal:
                        raise _Reconnect(f"{code}: {message}")
                elif t == "goodbye":
                    raise _Reconnect(m.get("reason", "goodbye"))

    def _set_normalisation(self, n: Optional[dict]):
        if n is None or n.get("state") == "frozen":
            self.normalisation = Normalisation.from_wire(n)

    def _score(self, version: int, weights: Weights) -> Dict[str, Any]:
        self.version = version
        if self.module is not None:
            _load_into(self.module, weights)
            target: Any = self.module
        else:
            target = weights
        figures = self._evaluate(target)
        if not isinstance(figures, dict):
            raise TypeError(f"evaluate returned {type(figures).__name__}, not a dict of figures")
        return report_message(version, figures)
