//! Trainers joining (hello, then join once the token is checked off the
//! actor) and leaving.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use crate::hub::encoded::Encoded;

use super::core::{Hub, SessionEntry, ToSession};
use crate::db::TrainerRow;
use crate::hub::metrics::HubEvent;
use crate::hub::outbox::Outbox;
use crate::hub::persister;
use crate::hub::state::{self, Admission, NormState, TrainerInfo};
use crate::protocol::{ErrorCode, ModelLayout, Normalisation, Refusal};

/// First step of a hello: may this name join, and how is it checked?
#[derive(Message)]
#[rtype(result = "Result<Admission, Refusal>")]
pub struct Hello {
    pub name: String,
    pub model: String,
    pub protocol: u32,
}

impl Handler<Hello> for Hub {
    type Result = Result<Admission, Refusal>;
    fn handle(&mut self, m: Hello, _: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return Err(Refusal::new(
                ErrorCode::ShuttingDown,
                "the hub is shutting down".into(),
            ));
        }
        if !self.models.contains_key(&m.model) {
            return Err(Refusal::new(
                ErrorCode::UnknownModel,
                format!(
                    "model `{}` does not exist on this hub (models: {})",
                    m.model,
                    self.models.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if m.protocol < crate::protocol::PROTOCOL_VERSION
            && self
                .models
                .get(&m.model)
                .is_some_and(|x| x.norm != NormState::Off)
        {
            return Err(Refusal::new(
ErrorCode::ProtocolVersion,
                format!(
                    "model `{}` normalises its inputs, which needs protocol {} (this trainer speaks {}); upgrade the trainer",
                    m.model,
                    crate::protocol::PROTOCOL_VERSION,
                    m.protocol
                ),
            ));
        }
        state::admit(
            &self.trainers,
            &m.name,
            self.cfg.hub.open_registration,
            &self.cfg.hub.allowed_trainers,
            self.cfg.hub.max_trainers,
        )
    }
}

/// What a session needs to greet its trainer.
pub struct Welcome {
    pub version: u64,
    pub layout: Arc<ModelLayout>,
    pub encoded: Encoded,
    pub max_staleness: u64,
    pub registered: bool,
    pub normalisation: Option<Normalisation>,
}

/// Second step of a hello, after the token was checked off the actor.
#[derive(Message)]
#[rtype(result = "Result<Welcome, Refusal>")]
pub struct Join {
    pub session_id: String,
    pub name: String,
    pub specialty: String,
    pub model: String,
    pub remote: Option<String>,
    /// Set when the trainer registers (trust on first use).
    pub new_hash: Option<String>,
    pub addr: Recipient<ToSession>,
    pub outbox: Arc<Outbox>,
}

impl Handler<Join> for Hub {
    type Result = ResponseActFuture<Self, Result<Welcome, Refusal>>;
    fn handle(&mut self, m: Join, _: &mut Self::Context) -> Self::Result {
        let registered = m.new_hash.is_some();
        if let Some(hash) = &m.new_hash {
            if self.trainers.contains_key(&m.name) {
                return Box::pin(fut::ready(Err(Refusal::new(
                    ErrorCode::BadToken,
                    format!(
                        "trainer `{}` was registered concurrently; connect again",
                        m.name
                    ),
                ))));
            }
            // Checked again here: other names may have registered since the
            // hello was admitted.
            let max = self.cfg.hub.max_trainers;
            if self.trainers.len() >= max {
                return Box::pin(fut::ready(Err(Refusal::new(
                    ErrorCode::TooManyTrainers,
                    format!(
                        "trainer `{}` cannot register: this hub has {max} registered trainers, its limit (hub.max_trainers); registered names still join",
                        m.name
                    ),
                ))));
            }
            if let Some(ip) = crate::hub::registration::peer_ip(m.remote.as_deref()) {
                let per_hour = self.cfg.hub.registrations_per_ip_per_hour;
                if let Err(wait) = self.registrations.take(ip, per_hour, Instant::now()) {
                    return Box::pin(fut::ready(Err(Refusal::new(
                        ErrorCode::TooManyRegistrations,
                        format!(
                            "trainer `{}` cannot register: {ip} registered {per_hour} new names within the hour (hub.registrations_per_ip_per_hour); try again in {wait:.0} s",
                            m.name
                        ),
                    ))));
                }
            }
            self.trainers.insert(
                m.name.clone(),
                TrainerInfo {
                    specialty: m.specialty.clone(),
                    token_hash: hash.clone(),
                    revoked: false,
                },
            );
        } else if self
            .trainers
            .get(&m.name)
            .map(|t| t.revoked)
            .unwrap_or(true)
        {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::Revoked,
                format!("trainer `{}` has been revoked", m.name),
            ))));
        }
        let persister = self.persister.clone();
        let trainer_row = m.new_hash.as_ref().map(|h| TrainerRow {
            name: m.name.clone(),
            specialty: m.specialty.clone(),
            token_hash: h.clone(),
            revoked: false,
            created_at: crate::db::now(),
            last_seen: None,
        });
        let open = persister::OpenSession {
            id: m.session_id.clone(),
            trainer: m.name.clone(),
            specialty: m.specialty.clone(),
            model: m.model.clone(),
            remote: m.remote.clone(),
        };
        let fut = async move {
            if let Some(row) = trainer_row {
                persister
                    .send(persister::UpsertTrainer(row))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            }
            persister
                .send(open)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        };
        Box::pin(fut.into_actor(self).map(move |res, act, _| {
            if let Err(e) = res {
                if registered {
                    act.trainers.remove(&m.name);
                }
                return Err(Refusal::new(
                    ErrorCode::Internal,
                    format!("could not record the session: {e}"),
                ));
            }
            let model = act.models.get(&m.model).ok_or(Refusal::new(
                ErrorCode::UnknownModel,
                format!("model `{}` is gone", m.model),
            ))?;
            let welcome = Welcome {
                version: model.version,
                layout: model.layout.clone(),
                encoded: model.encoded.clone(),
                max_staleness: model.settings.max_staleness,
                registered,
                normalisation: model.norm.wire(),
            };
            if let Some(t) = act.trainers.get_mut(&m.name) {
                t.specialty = m.specialty.clone();
            }
            if let Some(old) = act.sessions.insert(
                m.name.clone(),
                SessionEntry {
                    id: m.session_id.clone(),
                    model: m.model.clone(),
                    specialty: m.specialty.clone(),
                    addr: m.addr,
                    outbox: m.outbox,
                    since: crate::db::now(),
                },
            ) {
                old.addr.do_send(ToSession::Close {
                    code: ErrorCode::Replaced,
                    message: format!(
                        "a newer connection of trainer `{}` replaced this one",
                        m.name
                    ),
                });
            }
            log::info!(
                "trainer {} ({}) joined model {} at version {}{}",
                m.name,
                m.specialty,
                m.model,
                welcome.version,
                if registered { " (registered)" } else { "" }
            );
            act.event(HubEvent::TrainerJoined {
                trainer: m.name.clone(),
                specialty: m.specialty.clone(),
                model: m.model.clone(),
                registered,
            });
            act.gauges(&m.model);
            Ok(welcome)
        }))
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub session_id: String,
    pub name: String,
    pub reason: String,
}

impl Handler<Leave> for Hub {
    type Result = ();
    fn handle(&mut self, m: Leave, _: &mut Self::Context) {
        let current = self
            .sessions
            .get(&m.name)
            .map(|s| s.id == m.session_id)
            .unwrap_or(false);
        let model = if current {
            self.sessions.remove(&m.name).map(|s| s.model)
        } else {
            None
        };
        self.persister.do_send(persister::CloseSession {
            id: m.session_id,
            trainer: m.name.clone(),
            reason: m.reason.clone(),
        });
        if let Some(model) = model {
            log::info!("trainer {} left ({})", m.name, m.reason);
            self.event(HubEvent::TrainerLeft {
                trainer: m.name,
                model: model.clone(),
                reason: m.reason,
            });
            self.gauges(&model);
        }
    }
}
