"""The trainer's connection loop, as the Rust reference trainer runs it.

hello -> welcome + weights -> (stats, wait for the model's normalisation) ->
train on the newest version -> update + delta -> ack, and again on every new
version. On any failure it reconnects with exponential backoff and jitter and
sends an unacknowledged update again with the same `update_id`, so the hub
applies it exactly once. What it does about each of the hub's error codes is
the protocol's error table (`errors.ACTIONS`): a refusal no retry can change
stops it with `TrainerRefused`, and a hub never reached stops it with
`HubUnreachable` after the first attempts.
"""

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from . import errors
from .errors import HubUnreachable, TrainerRefused
from .normalisation import FeatureStats, Normalisation
from .tensors import decode as load
from .tensors import dtype_of, encode_delta, wire_dtype

PROTOCOL_VERSION = 2
TRAINER_WS_PATH = "/v1/trainers/ws"

Weights = Dict[str, np.ndarray]
TrainFn = Callable[[Weights, int], Tuple[Weights, int, float]]
EvalFn = Callable[[Weights, int], Optional[Dict[str, Any]]]


class _Reconnect(Exception):
    pass


@dataclass
class Summary:
    versions_trained: int = 0
    sent: int = 0
    acked: int = 0
    refused: int = 0
    refusal_codes: Dict[str, int] = field(default_factory=dict)
    acked_ids: List[str] = field(default_factory=list)
    last_version: int = 0


@dataclass
class _Pending:
    update_id: str
    base_version: int
    num_examples: int
    loss: Optional[float]
    payload: bytes


def ws_url(hub: str) -> str:
    """Whatever the user gave (`host:port`, http(s)://, ws(s)://) as the
    trainer WebSocket URL."""
    u = hub.rstrip("/")
    if u.startswith("http://"):
        u = "ws://" + u[len("http://"):]
    elif u.startswith("https://"):
        u = "wss://" + u[len("https://"):]
    elif not (u.startswith("ws://") or u.startswith("wss://")):
        u = "ws://" + u
    if not u.endswith(TRAINER_WS_PATH):
        u += TRAINER_WS_PATH
    return u


class Trainer:
    """One trainer of one model.

    `train(weights, version)` gets the global weights (tensor name -> array
    of the tensor's dtype and exact shape, 0-d included; BF16 as float32)
    and returns `(delta, num_examples, loss)`: `delta` holds `trained -
    weights` for every tensor (whole numbers for integer and bool tensors). `evaluate(weights, version)`, if
    given, returns a dict with any of `specialty_accuracy`,
    `global_accuracy`, `loss`, `num_examples` (or None), reported to the hub
    as a federated evaluation. `features` are the raw training inputs
    (rows x features): when the model pools feature statistics the trainer
    sends theirs and waits for the model's normalisation before training;
    `normalise(x)` applies it. `compress` ("f16" or "bf16") sends floating
    deltas in 16 bits, half the bytes (otherwise each in its tensor's
    dtype; integer deltas always as I64). A trainer that never reaches the hub gives up
    after `give_up_unreached` attempts (`HubUnreachable`; None: never).
    """

    def __init__(
        self,
        hub: str,
        name: str,
        specialty: str,
        token: str,
        *,
        train: TrainFn,
        model: str = "digits",
        evaluate: Optional[EvalFn] = None,
        features: Optional[np.ndarray] = None,
        max_versions: Optional[int] = None,
        reconnect: bool = True,
        max_backoff: float = 10.0,
        max_attempts: Optional[int] = None,
        on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
        json_events: bool = False,
        ssl: Any = None,
        compress: Optional[str] = None,
        give_up_unreached: Optional[int] = 5,
    ):
        self.url = ws_url(hub)
        self.name = name
        self.specialty = specialty
        self.token = token
        self.model = model
        self._train = train
        self._evaluate = evaluate
        self._stats = FeatureStats.of(features) if features is not None else None
        self.max_versions = max_versions
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.max_attempts = max_attempts
        self._on_event = on_event
        self._json_events = json_events
        self._ssl = ssl
        self._dtype = wire_dtype(compress)
        #: The model's dtype of each tensor, from the welcome.
        self.dtypes: Dict[str, str] = {}
        self.give_up_unreached = give_up_unreached
        #: The welcome's `max_message_bytes`: no larger update is sent.
        self.max_message_bytes: Optional[int] = None
        self._reached = False
        self.summary = Summary()
        #: The model's frozen normalisation, or None (none, or still pooling).
        self.normalisation: Optional[Normalisation] = None
        #: Whether the model normalises its inputs at all (pooling or frozen).
        self.model_normalises = False
        self._pending: Optional[_Pending] = None
        self._trained_versions = set()
        self._latest: Optional[Tuple[int, Weights]] = None
        self._welcomed = False

    # ------------------------------------------------------------ helpers

    def normalise(self, x, fallback: Optional[Callable] = None) -> np.ndarray:
        """Raw inputs as the model wants them: its frozen normalisation, or
        `fallback(x)` (for example scaling by your own file's statistics) on
        a model without one, or `x` unchanged."""
        if self.normalisation is not None:
            return self.normalisation.apply(x)
        if fallback is not None and not self.model_normalises:
            return fallback(x)
        return np.asarray(x, dtype=np.float32)

    def _emit(self, event: str, **fields):
        e = {"event": event, **fields}
        if self._json_events:
            print(json.dumps(e), flush=True)
        if self._on_event is not None:
            self._on_event(e)

    def _done(self) -> bool:
        return (
            self.max_versions is not None
            and self.summary.versions_trained >= self.max_versions
            and self._pending is None
        )

    # ------------------------------------------------------------ run

    def run(self) -> Summary:
        """Runs until `max_versions` are trained and acknowledged, or a fatal
        refusal (raised as TrainerRefused)."""
        return asyncio.run(self.run_async())

    async def run_async(self) -> Summary:
        attempt = 0
        while not self._done():
            try:
                await self._connection()
                attempt = 0
                if self._done():
                    break
            except TrainerRefused:
                self._finish()
                raise
            except (
                _Reconnect,
                OSError,
                ConnectionClosed,
                InvalidHandshake,
                asyncio.TimeoutError,
            ) as e:
                if not self.reconnect:
                    self._finish()
                    raise
                if self._welcomed:
                    attempt = 0
                attempt += 1
                if (
                    not self._reached
                    and self.give_up_unreached is not None
                    and attempt >= self.give_up_unreached
                ):
                    self._finish()
                    raise HubUnreachable(self.url, str(e) or type(e).__name__, attempt) from e
                if self.max_attempts is not None and attempt > self.max_attempts:
                    self._finish()
                    raise ConnectionError(f"{e} (gave up after {self.max_attempts} attempts)")
                base = min(0.25 * 2 ** (min(attempt, 10) - 1), self.max_backoff)
                wait = base * random.uniform(0.5, 1.5)
                self._emit("reconnect", attempt=attempt, in_secs=wait, reason=str(e) or type(e).__name__)
                await asyncio.sleep(wait)
        return self._finish()

    def _finish(self) -> Summary:
        s = self.summary
        self._emit("done", versions_trained=s.versions_trained, acked=s.acked, refused=s.refused)
        return s

    async def _connection(self):
        self._welcomed = False
        self._expect_binary: Optional[Tuple[int, int, Optional[float]]] = None
        self._waiting_norm = False
        self._norm_arrived: Optional[list] = None
        self._recv_task: Optional[asyncio.Future] = None
        try:
            await self._session()
        except InvalidURI as e:
            raise TrainerRefused("bad_url", str(e)) from e
        finally:
            if self._recv_task is not None and not self._recv_task.done():
                self._recv_task.cancel()

    async def _next(self, ws):
        if self._recv_task is None:
            self._recv_task = asyncio.ensure_future(ws.recv())
        try:
            return await self._recv_task
        finally:
            self._recv_task = None

    async def _session(self):
        async with connect(
            self.url, max_size=None, ssl=self._ssl, open_timeout=30, ping_interval=20
        ) as ws:
            self._reached = True
            await ws.send(
                json.dumps(
                    {
                        "type": "hello",
                        "protocol": PROTOCOL_VERSION,
                        "name": self.name,
                        "specialty": self.specialty,
                        "token": self.token,
                        "model": self.model,
                    }
                )
            )
            await self._await_welcome(ws)
            resent = False
            while True:
                if self._done():
                    await ws.send(json.dumps({"type": "bye"}))
                    await ws.close()
                    return
                if self._pending is not None and not resent:
                    resent = True
                    await self._send_update(ws, self._pending)
                if self._norm_arrived is not None:
                    (n,) = self._norm_arrived
                    self._norm_arrived = None
                    self._waiting_norm = False
                    if n is not None and n.get("state") == "pooling" and self._stats is not None:
                        # An administrator reset the model's statistics: send
                        # ours again and wait for the new freeze.
                        await ws.send(json.dumps(self._stats.message()))
                        self._waiting_norm = True
                        self.normalisation = None
                        self._emit("normalisation", state="pooling", features=n["features"], trainers=n.get("trainers", 0))
                    else:
                        self._set_normalisation(n)
                latest = self._latest
                if (
                    latest is not None
                    and self._pending is None
                    and not self._waiting_norm
                    and latest[0] not in self._trained_versions
                ):
                    resent = True
                    await self._train_on(ws, *latest)
                    continue
                await self._handle(await self._next(ws))

    async def _await_welcome(self, ws):
        while True:
            msg = await asyncio.wait_for(ws.recv(), 30)
            if isinstance(msg, bytes):
                continue
            m = json.loads(msg)
            if m.get("type") == "welcome":
                break
            if m.get("type") == "error":
                self._emit("error", code=m["code"], message=m["message"], update_id=None, fatal=m.get("fatal", True))
                if errors.action(m["code"]) == errors.GIVE_UP:
                    raise TrainerRefused(m["code"], m["message"])
                raise _Reconnect(f"{m['code']}: {m['message']}")
            if m.get("type") == "goodbye":
                raise _Reconnect(m.get("reason", "goodbye"))
        self.max_message_bytes = m.get("max_message_bytes")
        weights = load(await asyncio.wait_for(ws.recv(), 60))
        self._check_layout(m["tensors"], weights)
        self.dtypes = {t["name"]: t.get("dtype", "F32") for t in m["tensors"]}
        self._welcomed = True
        version = int(m["version"])
        self._emit(
            "welcome",
            trainer=m["trainer"],
            model=m["model"],
            version=version,
            registered=m["registered"],
            session_id=m["session_id"],
        )
        self._offer(version, weights, m.get("num_updates", 0), None, announce=False)
        n = m.get("normalisation")
        self.model_normalises = n is not None
        if n is not None and n.get("state") == "pooling":
            if self._stats is not None:
                if len(self._stats.sum) != n["features"]:
                    raise TrainerRefused(
                        "bad_stats",
                        f"the model has {n['features']} input features; these features have {len(self._stats.sum)}",
                    )
                await ws.send(json.dumps(self._stats.message()))
                self._waiting_norm = True
                self._emit("normalisation", state="pooling", features=n["features"], trainers=n.get("trainers", 0))
            else:
                self._set_normalisation(None)
        else:
            self._set_normalisation(n)

    def _check_layout(self, tensors, weights: Weights):
        for t in tensors:
            w = weights.get(t["name"])
            if w is None or list(w.shape) != list(t["shape"]):
                raise TrainerRefused("tensor_mismatch", f"the hub's weights lack {t['name']} {t['shape']}")

    def _set_normalisation(self, n: Optional[dict]):
        self.normalisation = Normalisation.from_wire(n)
        if n is not None:
            self.model_normalises = True
        state = "frozen" if self.normalisation is not None else "none"
        self._emit(
            "normalisation",
            state=state,
            features=int(n["features"]) if n else 0,
            trainers=int(n.get("trainers", 0)) if n else 0,
        )

    def _offer(self, version: int, weights: Weights, num_updates: int, acc, announce=True):
        if announce or version > 0 or self._latest is None:
            self._emit("version", version=version, num_updates=num_updates, hub_accuracy=acc)
        if self._latest is None or version > self._latest[0]:
            self._latest = (version, weights)

    async def _train_on(self, ws, version: int, weights: Weights):
        if self._evaluate is not None:
            r = await asyncio.to_thread(self._evaluate, weights, version)
            if r:
                self._emit(
                    "evaluation",
                    version=version,
                    specialty_accuracy=r.get("specialty_accuracy"),
                    global_accuracy=r.get("global_accuracy"),
                    loss=r.get("loss"),
                )
                await ws.send(json.dumps({"type": "eval", "version": version, **r}))
        started = time.monotonic()
        task = asyncio.ensure_future(asyncio.to_thread(self._train, weights, version))
        # Keep reading (new versions, acks) while the training step runs.
        while not task.done():
            if self._recv_task is None:
                self._recv_task = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait(
                {task, self._recv_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if self._recv_task in done:
                msg = self._recv_task.result()
                self._recv_task = None
                await self._handle(msg)
        delta, num_examples, loss = task.result()
        payload = self._encode(delta, weights, self._dtype, self.dtypes)
        update_id = f"{self.name}-v{version}-{uuid.uuid4().hex}"
        self._trained_versions.add(version)
        self.summary.versions_trained += 1
        self.summary.last_version = version
        loss = float(loss) if loss is not None and np.isfinite(loss) else None
        self._emit(
            "trained",
            base_version=version,
            update_id=update_id,
            num_examples=int(num_examples),
            loss=loss,
            seconds=time.monotonic() - started,
        )
        self._pending = _Pending(update_id, version, max(int(num_examples), 1), loss, payload)
        await self._send_update(ws, self._pending)

    @staticmethod
    def _encode(
        delta: Weights,
        weights: Weights,
        dtype: Optional[str] = None,
        dtypes: Optional[Dict[str, str]] = None,
    ) -> bytes:
        """The update's safetensors: floating deltas as `dtype` (a
        compression) or the model's dtype of each tensor (`dtypes`, else the
        weights' own), integer and bool deltas as I64; shapes exact."""
        out = {}
        for k, w in weights.items():
            d = delta.get(k)
            if d is None:
                raise ValueError(f"the delta has no tensor {k}")
            # np.array keeps a 0-d tensor 0-d (ascontiguousarray makes it 1-d).
            d = np.array(d, order="C")
            if d.shape != np.shape(w):
                raise ValueError(f"delta {k} has shape {d.shape}, the model's is {np.shape(w)}")
            out[k] = d
        extra = set(delta) - set(weights)
        if extra:
            raise ValueError(f"the delta has tensors the model lacks: {sorted(extra)}")
        own = {k: (dtypes or {}).get(k) or dtype_of(w) for k, w in weights.items()}
        return encode_delta(out, own, dtype)

    async def _send_update(self, ws, p: _Pending):
        limit = self.max_message_bytes
        if limit is not None and len(p.payload) > limit:
            # The hub would close the connection, and every resend too.
            raise TrainerRefused(
                "message_too_large",
                f"this update is {len(p.payload)} bytes and the hub takes messages of at most "
                f"{limit} bytes (welcome.max_message_bytes): send it compressed (compress='bf16' "
                "or 'f16' halves it) or ask the hub's administrator to raise hub.max_message_bytes, "
                "hub.max_inflight_update_bytes and hub.max_inflight_share",
            )
        header = {
            "type": "update",
            "update_id": p.update_id,
            "base_version": p.base_version,
            "num_examples": p.num_examples,
        }
        if p.loss is not None:
            header["loss"] = p.loss
        await ws.send(json.dumps(header))
        await ws.send(p.payload)
        self.summary.sent += 1

    async def _handle(self, msg):
        if isinstance(msg, bytes):
            if self._expect_binary is not None:
                version, num_updates, acc = self._expect_binary
                self._expect_binary = None
                self._offer(version, load(msg), num_updates, acc)
            return
        m = json.loads(msg)
        t = m.get("type")
        if t == "model":
            acc = ((m.get("metrics") or {}).get("eval") or {}).get("accuracy")
            self._expect_binary = (int(m["version"]), int(m.get("num_updates", 0)), acc)
        elif t == "ack":
            p = self._pending
            if p is not None and p.update_id == m["update_id"]:
                self._pending = None
                self.summary.acked += 1
                self.summary.acked_ids.append(m["update_id"])
            self._emit(
                "ack",
                update_id=m["update_id"],
                base_version=m["base_version"],
                staleness=m["staleness"],
                duplicate=m["duplicate"],
            )
        elif t == "error":
            code, message = m["code"], m["message"]
            uid, fatal = m.get("update_id"), m.get("fatal", False)
            self._emit("error", code=code, message=message, update_id=uid, fatal=fatal)
            if code == "bad_stats" and self._waiting_norm:
                self._norm_arrived = [None]
            ours = uid is not None and self._pending is not None and self._pending.update_id == uid
            act = errors.action(code)
            if ours and act == errors.DROP_UPDATE:
                # Refused for good (stale, bad values...): never resend it.
                self._pending = None
                self.summary.refused += 1
                self.summary.refusal_codes[code] = self.summary.refusal_codes.get(code, 0) + 1
            if act == errors.GIVE_UP:
                raise TrainerRefused(code, message)
            if fatal or (ours and act == errors.RESEND):
                raise _Reconnect(f"{code}: {message}")
        elif t == "normalisation":
            self._norm_arrived = [m.get("normalisation")]
        elif t == "goodbye":
            raise _Reconnect(m.get("reason", "goodbye"))
