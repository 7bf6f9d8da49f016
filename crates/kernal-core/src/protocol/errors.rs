//! The error table: every stable error code, declared once with where it can
//! appear, its HTTP status, what a trainer does about it and its meaning.
//! The enum, its string forms, the fatal flag, the REST status, the clients'
//! retry policy and the table in docs/PROTOCOL.md all come from this one list
//! (a test checks the page against [`markdown_table`]; the Python package's
//! copy of the actions is checked against the page by its own tests).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a code can be met, which also says whether it ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Refuses one message on a trainer connection; the connection stays up.
    Message,
    /// Ends the trainer connection after the `error` message (`fatal: true`).
    Connection,
    /// Recorded in the ledger and the event feed for an update that was
    /// already acknowledged; never sent on a connection.
    Ledger,
    /// Only in REST responses (and HTTP refusals of a WebSocket upgrade).
    Rest,
}

/// What a trainer does when the hub answers with a code. One rule for
/// every client (the Rust loop and the Python package): a refusal that no
/// retry can change stops the trainer instead of looping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAction {
    /// Stop the trainer with the hub's message: retrying cannot succeed
    /// (bad token, revoked, unknown model, an update the model can never
    /// take...).
    GiveUp,
    /// This update is refused for good: drop it and train on the next
    /// version; the connection stays (or is made again if it was closed).
    DropUpdate,
    /// The update was not stored through no fault of its own: reconnect
    /// with backoff and send it again with the same `update_id`.
    Resend,
    /// Reconnect with backoff; an unacknowledged update is sent again.
    Reconnect,
    /// Never sent on a trainer connection (REST or ledger only).
    NotSent,
}

impl ClientAction {
    /// The name the protocol page (and the Python package) use.
    pub fn as_str(&self) -> &'static str {
        match self {
            ClientAction::GiveUp => "give_up",
            ClientAction::DropUpdate => "drop_update",
            ClientAction::Resend => "resend",
            ClientAction::Reconnect => "reconnect",
            ClientAction::NotSent => "—",
        }
    }
}

macro_rules! error_table {
    ($( $(#[$attr:meta])* $variant:ident = $code:literal, $scope:ident, $http:literal, $action:ident, $meaning:literal; )*) => {
        /// Stable error codes. Their string forms are a contract with users'
        /// scripts: add new ones freely, never rename.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$attr])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in the order of the table.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            pub fn as_str(&self) -> &'static str {
                match self { $( ErrorCode::$variant => $code, )* }
            }

            pub fn scope(&self) -> Scope {
                match self { $( ErrorCode::$variant => Scope::$scope, )* }
            }

            /// The HTTP status of a REST error with this code.
            pub fn http_status(&self) -> u16 {
                match self { $( ErrorCode::$variant => $http, )* }
            }

            /// What a trainer does when it gets this code.
            pub fn client_action(&self) -> ClientAction {
                match self { $( ErrorCode::$variant => ClientAction::$action, )* }
            }

            /// One line on what the code means, as the protocol page shows it.
            pub fn meaning(&self) -> &'static str {
                match self { $( ErrorCode::$variant => $meaning, )* }
            }
        }
    };
}

error_table! {
    BadJson = "bad_json", Message, 400, DropUpdate,
        "a text frame is not JSON, or a known message has missing or invalid fields";
    UnknownType = "unknown_type", Message, 400, DropUpdate,
        "`type` missing or not one of hello, update, eval, stats, evaluator_report, ping, bye";
    HelloRequired = "hello_required", Message, 400, DropUpdate,
        "a message other than `hello`, `ping` or `bye` before the welcome";
    HelloTimeout = "hello_timeout", Connection, 400, Reconnect,
        "no `hello` arrived within `hello_timeout_secs` of connecting";
    AlreadyGreeted = "already_greeted", Message, 400, DropUpdate,
        "a second `hello` on the same connection";
    ProtocolVersion = "protocol_version", Connection, 400, GiveUp,
        "`protocol` is not a version this hub speaks (or version 1 on a model with input normalisation)";
    BadToken = "bad_token", Connection, 400, GiveUp,
        "wrong token for a registered name, or a token that is empty or over 1024 characters";
    Revoked = "revoked", Connection, 403, GiveUp,
        "an administrator revoked this trainer (or this evaluator's token)";
    NotAllowed = "not_allowed", Connection, 403, GiveUp,
        "registration is closed and the name is not in `allowed_trainers`";
    TooManyTrainers = "too_many_trainers", Connection, 409, GiveUp,
        "a new name while the hub has `max_trainers` registered trainers (registered names still join)";
    TooManyRegistrations = "too_many_registrations", Connection, 429, Reconnect,
        "this address registered `registrations_per_ip_per_hour` new names within the hour; registered names still join";
    BadName = "bad_name", Connection, 400, GiveUp,
        "name or specialty has bad characters or length";
    UnknownModel = "unknown_model", Connection, 404, GiveUp,
        "the hub has no such model";
    UnexpectedBinary = "unexpected_binary", Message, 400, DropUpdate,
        "a binary frame that does not follow an `update` (or any binary frame before the welcome)";
    ExpectedBinary = "expected_binary", Message, 400, DropUpdate,
        "an `update` was followed by another text message instead of its binary frame; the earlier update is dropped";
    BadSafetensors = "bad_safetensors", Message, 400, GiveUp,
        "the binary frame is not a valid safetensors file";
    TensorMismatch = "tensor_mismatch", Message, 400, GiveUp,
        "tensor names, shapes or dtypes differ from the model's";
    NonFinite = "non_finite", Message, 400, DropUpdate,
        "a value is NaN or infinite (an F64 value beyond the f32 range counts: the hub aggregates in f32)";
    NonIntegerDelta = "non_integer_delta", Message, 400, GiveUp,
        "a delta for an integer or bool tensor holds a fractional value, or one beyond ±2^24 (16,777,216)";
    BadNumExamples = "bad_num_examples", Message, 400, DropUpdate,
        "`num_examples` is 0 or above the model's `max_num_examples`";
    BadLoss = "bad_loss", Message, 400, DropUpdate,
        "`loss` is not a finite number (including a bare `NaN` or `Infinity` token)";
    BadUpdateId = "bad_update_id", Message, 400, DropUpdate,
        "`update_id` empty, over 128 characters or not printable";
    BadEval = "bad_eval", Message, 400, DropUpdate,
        "an `eval` or `evaluator_report` for a version the model does not have yet, an accuracy outside [0, 1], a negative or non-finite loss, bits per byte outside [0, 64], or `num_examples` above the model's limit; an evaluation set (`PUT /v1/models/{m}/evalset`) with a value that is NaN, infinite or beyond the f32 range (the message names line and column)";
    BadStats = "bad_stats", Message, 400, DropUpdate,
        "a `stats` report of the wrong width, with a count of 0 or above `max_num_examples`, non-finite or impossible values (a negative variance, means beyond ±1e9), or for a model without federated normalisation";
    StatsRejected = "stats_rejected", Message, 400, DropUpdate,
        "your `stats` were left out of the pooled normalisation when it froze: they lie orders of magnitude outside the other trainers' (the message names the feature; a column in other units, say). The model's statistics follow in a `normalisation` message";
    FutureBaseVersion = "future_base_version", Message, 400, DropUpdate,
        "`base_version` is newer than the current version";
    StaleUpdate = "stale_update", Message, 400, DropUpdate,
        "`base_version` is older than `max_staleness` allows";
    UpdateTooLargeNorm = "update_too_large_norm", Message, 400, DropUpdate,
        "the update's L2 norm is above the model's `max_update_norm`";
    NonFiniteResult = "non_finite_result", Ledger, 400, NotSent,
        "folding this update made the model's weights non-finite: the fold was abandoned and the update refused";
    RolledBack = "rolled_back", Ledger, 400, NotSent,
        "an administrator rolled the model back to a version older than this pending update's base";
    UnreadableUpdate = "unreadable_update", Ledger, 400, NotSent,
        "a pending update could not be read back at start (payload missing or damaged) and was refused";
    MessageTooLarge = "message_too_large", Connection, 413, GiveUp,
        "a message over `max_message_bytes` (over `max_prehello_bytes` before the welcome)";
    TooManyFragments = "too_many_fragments", Connection, 400, GiveUp,
        "a message split into more than `max_fragments` frames";
    BadFrame = "bad_frame", Connection, 400, Reconnect,
        "a WebSocket frame that breaks RFC 6455: unmasked, reserved bits or opcode, a fragmented or oversized control frame";
    Busy = "busy", Connection, 503, Resend,
        "a fragmented message waited `client_timeout_secs` for room in the hub's in-flight budget; send it again later";
    TooSlow = "too_slow", Connection, 408, Resend,
        "a message holding part of the in-flight budget arrived slower than `min_upload_bytes_per_sec`";
    SlowConsumer = "slow_consumer", Connection, 503, Resend,
        "the trainer did not read what the hub sent: more than `max_outbound_bytes` waited for it";
    TooManyHandshakes = "too_many_handshakes", Connection, 503, Reconnect,
        "HTTP 503 on the upgrade: too many connections (or too many from this address) are waiting for their hello";
    ForbiddenOrigin = "forbidden_origin", Rest, 403, NotSent,
        "HTTP 403 on the upgrade: a browser page of another origin (not in `allowed_origins`) tried to connect";
    Replaced = "replaced", Connection, 409, GiveUp,
        "a newer connection with the same trainer name took over";
    ShuttingDown = "shutting_down", Connection, 503, Resend,
        "the hub is stopping; the update (if any) was not accepted, send it again after reconnecting (`fatal: false` when it answers an update)";
    NotFound = "not_found", Rest, 404, NotSent,
        "no such route, version or run";
    UnknownTrainer = "unknown_trainer", Rest, 404, NotSent,
        "no trainer of that name is registered";
    BadRequest = "bad_request", Rest, 400, NotSent,
        "a malformed body, query or path, or a setting outside its range (the message names the key and the range)";
    ModelTooLarge = "model_too_large", Rest, 400, NotSent,
        "the model would have more parameters than `hub.max_model_params`";
    Unauthorized = "unauthorized", Rest, 401, NotSent,
        "this call needs the admin token and none was given";
    Forbidden = "forbidden", Rest, 403, NotSent,
        "wrong admin token";
    Conflict = "conflict", Rest, 409, NotSent,
        "a model of that name already exists, or the state does not allow the call";
    WeightsPruned = "weights_pruned", Rest, 410, NotSent,
        "the version exists but its weights were dropped by `keep_weights_versions`";
    MethodNotAllowed = "method_not_allowed", Rest, 405, NotSent,
        "the path exists but not with this method (the `Allow` header lists those it has)";
    PayloadTooLarge = "payload_too_large", Rest, 413, NotSent,
        "a REST request body over its limit";
    UpdateOverLimit = "update_over_limit", Rest, 400, NotSent,
        "`POST /v1/models`: one full float32 update of this model would be larger than a trainer may send (`hub.max_message_bytes`, and `hub.max_inflight_update_bytes` × `hub.max_inflight_share`); the message gives the sizes and the keys to raise";
    IntegerOutOfRange = "integer_out_of_range", Rest, 400, NotSent,
        "`POST /v1/models`: an integer tensor holds a value beyond ±2^24 (16,777,216), the largest the hub holds exactly (it keeps every value as f32)";
    ModelInUse = "model_in_use", Rest, 409, NotSent,
        "`DELETE /v1/models/{m}` while trainers of the model are connected; `?force=true` disconnects them (`model_deleted`)";
    ModelDeleted = "model_deleted", Connection, 410, GiveUp,
        "an administrator deleted the model this trainer trains";
    NotTrainer = "not_trainer", Message, 403, DropUpdate,
        "an evaluator connection sent `update`, `stats` or `eval`: evaluators only report (`evaluator_report`)";
    NotEvaluator = "not_evaluator", Message, 403, DropUpdate,
        "a trainer connection sent `evaluator_report`: only a connection whose hello said `role: evaluator` (with an evaluator token) reports";
    UnknownEvaluator = "unknown_evaluator", Rest, 404, NotSent,
        "the model has no evaluator of that name";
    StorageFull = "storage_full", Message, 507, Resend,
        "the hub's disk (or its database's size limit) is full: the update was not stored through no fault of its own (or the call not answered); send it again later";
    StorageUnavailable = "storage_unavailable", Message, 503, Resend,
        "the hub could not reach its storage (an I/O or SQLite failure): the update was not stored through no fault of its own (or the call not answered); send it again";
    Internal = "internal", Message, 500, Resend,
        "the hub could not store the update (or answer the call); the message says why; send it again";
}

impl ErrorCode {
    /// Whether the hub closes the connection after sending this error.
    pub fn is_fatal(&self) -> bool {
        self.scope() == Scope::Connection
    }

    pub fn from_code(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        ErrorCode::from_code(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code `{s}`")))
    }
}

/// Why something was refused: a code from the table and one sentence for
/// the person reading it. Actor replies, REST errors and `error` messages
/// all carry one, so the pair is never unpacked by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: String) -> Self {
        Refusal { code, message }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The error-code table of docs/PROTOCOL.md, generated from the declaration.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| code | on a trainer connection | HTTP | client | meaning |\n|---|---|---|---|---|\n",
    );
    for c in ErrorCode::ALL {
        let scope = match c.scope() {
            Scope::Message => "error, connection stays",
            Scope::Connection => "error, then the hub closes",
            Scope::Ledger => "ledger and events only",
            Scope::Rest => "—",
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            c.as_str(),
            scope,
            c.http_status(),
            c.client_action().as_str(),
            c.meaning()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            let s = c.as_str();
            assert!(seen.insert(s), "{s} declared twice");
            assert!(s.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'));
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), *c);
            assert!((400..600).contains(&c.http_status()));
        }
        assert!(serde_json::from_str::<ErrorCode>("\"no_such_code\"").is_err());
    }

    /// Codes a trainer can meet have an action; the others have none.
    #[test]
    fn client_actions_fit_where_codes_are_met() {
        for c in ErrorCode::ALL {
            let sent = matches!(c.scope(), Scope::Message | Scope::Connection);
            assert_eq!(
                c.client_action() != ClientAction::NotSent,
                sent,
                "{c}: {:?} in scope {:?}",
                c.client_action(),
                c.scope()
            );
        }
        for c in [
            ErrorCode::MessageTooLarge,
            ErrorCode::TensorMismatch,
            ErrorCode::BadToken,
            ErrorCode::Revoked,
            ErrorCode::UnknownModel,
        ] {
            assert_eq!(c.client_action(), ClientAction::GiveUp, "{c}");
        }
    }

    /// The protocol page lists exactly the declared codes, as generated.
    #[test]
    fn protocol_page_lists_exactly_the_declared_codes() {
        let page = include_str!("../../../../docs/PROTOCOL.md");
        let table = markdown_table();
        assert!(
            page.contains(&table),
            "docs/PROTOCOL.md's error table differs from the declaration; paste this:\n\n{table}"
        );
        let listed = page
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| l.split('`').nth(1))
            .filter(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'))
            .count();
        assert_eq!(
            listed,
            ErrorCode::ALL.len(),
            "codes listed outside the table"
        );
    }
}
