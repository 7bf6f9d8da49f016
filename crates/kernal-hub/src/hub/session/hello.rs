//! A trainer's hello: its protocol, name and token checked, then its
//! welcome (or refusal) from the hub.

use actix::prelude::*;
use bytes::Bytes;

use super::actor::TrainerSession;
use super::phase::{Phase, Ready};
use crate::hub::hub_actor::{self, ToSession};
use crate::hub::secrets::{self, TokenKey};
use crate::hub::state::Admission;
use crate::protocol::{validate_name, ErrorCode, Refusal, ServerMessage, PROTOCOL_VERSION};

/// Argon2 token checks run at most this many at a time: each holds 19 MiB,
/// so a storm of hellos (a thousand trainers reconnecting after a restart)
/// must queue instead of allocating gigabytes at once. Hub-issued tokens
/// (fast keyed hash, see `secrets`) skip the queue.
pub(super) static TOKEN_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Checks a hello's token against the stored hash (or hashes it for a new
/// name): the fast keyed hash on the spot, argon2 on the blocking pool, two at
/// a time. Returns the hash to store for a new name.
async fn check_token(
    key: TokenKey,
    token: String,
    admission: Admission,
    name: &str,
) -> Result<Option<String>, Refusal> {
    let internal = |e: String| Refusal::new(ErrorCode::Internal, e);
    let slow = match &admission {
        Admission::Verify { token_hash } => secrets::slow_check(token_hash),
        Admission::Register => secrets::slow_hash(&key, &token),
    };
    let _permit = if slow {
        Some(
            TOKEN_CHECKS
                .acquire()
                .await
                .map_err(|e| internal(e.to_string()))?,
        )
    } else {
        None
    };
    let work = move || match admission {
        Admission::Verify { token_hash } => {
            Ok(secrets::verify_token(&key, &token, &token_hash).then_some(None))
        }
        Admission::Register => secrets::hash_token(&key, &token).map(|h| Some(Some(h))),
    };
    let res = if slow {
        actix_web::rt::task::spawn_blocking(work)
            .await
            .map_err(|e| internal(e.to_string()))?
    } else {
        work()
    };
    match res.map_err(|e| internal(e.to_string()))? {
        Some(new_hash) => Ok(new_hash),
        None => Err(Refusal::new(
            ErrorCode::BadToken,
            format!("wrong token for trainer `{name}`"),
        )),
    }
}

/// The longest token a hello may carry: bounds the hashing a stranger's
/// hello costs before anything is checked. One rule for trainers and
/// evaluators.
pub const MAX_TOKEN_LEN: usize = 1024;

/// Why `token` is refused before it is checked (`bad_token`), if it is.
pub(super) fn token_size_error(token: &str) -> Option<String> {
    (token.is_empty() || token.len() > MAX_TOKEN_LEN)
        .then(|| format!("token must be 1 to {MAX_TOKEN_LEN} characters"))
}

impl TrainerSession {
    pub(super) fn on_hello(
        &mut self,
        protocol: u32,
        name: String,
        specialty: String,
        token: String,
        model: String,
        ctx: &mut Context<Self>,
    ) {
        if !(crate::protocol::OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol) {
            return self.error(
                ctx,
                ErrorCode::ProtocolVersion,
                format!(
                    "this hub speaks protocol {} to {PROTOCOL_VERSION}, not {protocol}",
                    crate::protocol::OLDEST_PROTOCOL_VERSION
                ),
                None,
            );
        }
        if let Err(e) = validate_name(&name) {
            return self.error(ctx, ErrorCode::BadName, format!("trainer {e}"), None);
        }
        if let Err(e) = validate_name(&specialty) {
            return self.error(ctx, ErrorCode::BadName, format!("specialty {e}"), None);
        }
        if let Some(why) = token_size_error(&token) {
            return self.error(ctx, ErrorCode::BadToken, why, None);
        }
        self.phase = Phase::Verifying;
        let hub = self.hub.clone();
        let addr = ctx.address().recipient::<ToSession>();
        let outbox = self.outbox.clone();
        let (sid, remote) = (self.id.clone(), self.remote.clone());
        let join = hub_actor::Join {
            session_id: sid,
            name: name.clone(),
            specialty: specialty.clone(),
            model: model.clone(),
            remote,
            new_hash: None,
            addr,
            outbox,
        };
        let key = self.tokens.clone();
        let fut = async move {
            let admission = hub
                .send(hub_actor::Hello {
                    name: join.name.clone(),
                    model: join.model.clone(),
                    protocol,
                })
                .await
                .map_err(|e| Refusal::new(ErrorCode::ShuttingDown, e.to_string()))??;
            let new_hash = check_token(key, token, admission, &join.name).await?;
            hub.send(hub_actor::Join { new_hash, ..join })
                .await
                .map_err(|e| Refusal::new(ErrorCode::ShuttingDown, e.to_string()))?
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if matches!(act.phase, Phase::Closing) {
                return;
            }
            // Welcomed or refused, this connection no longer waits for its hello.
            act.handshake = None;
            match res {
                Ok(w) => {
                    let welcome = ServerMessage::Welcome {
                        protocol: PROTOCOL_VERSION,
                        session_id: act.id.clone(),
                        trainer: name.clone(),
                        specialty: specialty.clone(),
                        model: model.clone(),
                        version: w.version,
                        registered: w.registered,
                        tensors: w.layout.tensors.clone(),
                        max_message_bytes: act.limits.max_message_bytes,
                        heartbeat_interval_secs: act.limits.heartbeat_interval.as_secs(),
                        max_staleness: w.max_staleness,
                        normalisation: w.normalisation,
                    }
                    .to_json();
                    act.activity.authenticate();
                    act.outbox.welcome(Bytes::from(welcome), w.encoded);
                    act.phase = Phase::Ready(Ready {
                        name,
                        specialty,
                        model,
                        layout: w.layout,
                        pending: None,
                    });
                }
                Err(Refusal { code, message }) => {
                    act.phase = Phase::AwaitingHello;
                    let code = if code.is_fatal() {
                        code
                    } else {
                        ErrorCode::BadToken
                    };
                    act.error(ctx, code, message, None);
                }
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_1_to_1024_bytes() {
        assert!(token_size_error("t").is_none());
        assert!(token_size_error(&"t".repeat(MAX_TOKEN_LEN)).is_none());
        assert_eq!(
            token_size_error("").as_deref(),
            Some("token must be 1 to 1024 characters")
        );
        assert!(token_size_error(&"t".repeat(MAX_TOKEN_LEN + 1)).is_some());
    }
}
