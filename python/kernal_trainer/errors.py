"""What a trainer does about each of the hub's error codes.

`ACTIONS` is a copy of the `client` column of the error table in
docs/PROTOCOL.md, which is generated from the Rust declaration
(crates/kernal-core/src/protocol/errors.rs); the package's tests fail when
the two differ. The actions:

- `give_up`: stop the trainer with the hub's message (`TrainerRefused`): no
  retry can succeed (bad token, revoked, unknown model, an update the model
  can never take);
- `drop_update`: the update is refused for good; train on the next version;
- `resend`: the update was not stored through no fault of its own: reconnect
  with backoff and send it again with the same `update_id`;
- `reconnect`: reconnect with backoff (an unacknowledged update is resent).

Codes only seen in REST answers or the ledger have no action here.
"""

from typing import Dict

GIVE_UP = "give_up"
DROP_UPDATE = "drop_update"
RESEND = "resend"
RECONNECT = "reconnect"

ACTIONS: Dict[str, str] = {
    "bad_json": DROP_UPDATE,
    "unknown_type": DROP_UPDATE,
    "hello_required": DROP_UPDATE,
    "hello_timeout": RECONNECT,
    "already_greeted": DROP_UPDATE,
    "protocol_version": GIVE_UP,
    "bad_token": GIVE_UP,
    "revoked": GIVE_UP,
    "not_allowed": GIVE_UP,
    "too_many_trainers": GIVE_UP,
    "too_many_registrations": RECONNECT,
    "bad_name": GIVE_UP,
    "unknown_model": GIVE_UP,
    "unexpected_binary": DROP_UPDATE,
    "expected_binary": DROP_UPDATE,
    "bad_safetensors": GIVE_UP,
    "tensor_mismatch": GIVE_UP,
    "non_finite": DROP_UPDATE,
    "non_integer_delta": GIVE_UP,
    "bad_num_examples": DROP_UPDATE,
    "bad_loss": DROP_UPDATE,
    "bad_update_id": DROP_UPDATE,
    "bad_eval": DROP_UPDATE,
    "bad_stats": DROP_UPDATE,
    "stats_rejected": DROP_UPDATE,
    "future_base_version": DROP_UPDATE,
    "stale_update": DROP_UPDATE,
    "update_too_large_norm": DROP_UPDATE,
    "message_too_large": GIVE_UP,
    "too_many_fragments": GIVE_UP,
    "bad_frame": RECONNECT,
    "busy": RESEND,
    "too_slow": RESEND,
    "slow_consumer": RESEND,
    "too_many_handshakes": RECONNECT,
    "replaced": GIVE_UP,
    "shutting_down": RESEND,
    "storage_full": RESEND,
    "storage_unavailable": RESEND,
    "internal": RESEND,
    "model_deleted": GIVE_UP,
    "not_trainer": DROP_UPDATE,
    "not_evaluator": DROP_UPDATE,
}


def action(code: str) -> str:
    """The action for a code; an unknown (newer) code reconnects, the
    cautious choice that neither loses an update nor stops a trainer."""
    return ACTIONS.get(code, RECONNECT)


class TrainerRefused(Exception):
    """The hub refused this trainer, or an update of it, for good (bad token,
    revoked, unknown model, an update larger than the hub takes...): retrying
    cannot help. `code` is the hub's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(f"the hub refused this trainer: {code}: {message}")
        self.code = code
        self.message = message


class HubUnreachable(ConnectionError):
    """The hub was never reached: wrong address or port, or it is not
    running. Raised after the first failed attempts of a trainer that was
    never welcomed (a hub that was reached once is waited for)."""

    def __init__(self, url: str, reason: str, attempts: int):
        address = url.split("://", 1)[-1].split("/", 1)[0]
        # The sentence the Rust client says too (`never_reached`).
        super().__init__(
            f"never reached the hub at {address} ({url}): {attempts} connection attempts failed: "
            f"{reason}. Is the hub running, and is {address} its address and port?"
        )
        self.url = url
        self.reason = reason
        self.attempts = attempts
