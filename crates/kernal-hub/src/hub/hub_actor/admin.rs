//! Admin messages: revocation, models created through the API, harness
//! runs, a re-read config, shutdown.

use actix::prelude::*;

use std::sync::Arc;

use crate::hub::encoded::Encoded;

use super::core::{persisted, Hub, ToSession};
use crate::aggregation::AggregationSettings;
use crate::config::Config;
use crate::db::{ModelRow, NewHarnessRun};
use crate::hub::metrics::HubEvent;
use crate::hub::persister;
use crate::hub::state::{self, ModelState, NormState};
use crate::hub::version_metrics::VersionMetrics;
use crate::protocol::{ErrorCode, ModelLayout, Refusal};

/// Revokes a trainer (closing its connection) or reinstates it.
#[derive(Message)]
#[rtype(result = "Result<bool, Refusal>")]
pub struct SetRevocation {
    pub name: String,
    pub revoked: bool,
}

impl Handler<SetRevocation> for Hub {
    type Result = ResponseActFuture<Self, Result<bool, Refusal>>;
    fn handle(&mut self, m: SetRevocation, _: &mut Self::Context) -> Self::Result {
        let Some(t) = self.trainers.get_mut(&m.name) else {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::UnknownTrainer,
                format!("no trainer named `{}`", m.name),
            ))));
        };
        t.revoked = m.revoked;
        if m.revoked {
            if let Some(s) = self.sessions.get(&m.name) {
                s.addr.do_send(ToSession::Close {
                    code: ErrorCode::Revoked,
                    message: "an administrator revoked this trainer".into(),
                });
            }
            // Its buffered updates no longer count; the next version
            // refuses them in the ledger (`revoked`).
            for (model, state) in self.models.iter_mut() {
                let dropped = state.drop_trainer(&m.name);
                if !dropped.is_empty() {
                    log::warn!(
                        "model {model}: {} buffered update(s) of revoked trainer {} dropped",
                        dropped.len(),
                        m.name
                    );
                }
            }
        }
        let persister = self.persister.clone();
        let SetRevocation { name, revoked } = m;
        Box::pin(
            async move {
                persister
                    .send(persister::SetRevoked { name, revoked })
                    .await
            }
            .into_actor(self)
            .map(|res, _, _| persisted(res)),
        )
    }
}

/// A model created through the admin API.
#[derive(Message)]
#[rtype(result = "Result<u64, Refusal>")]
pub struct CreateModel {
    pub name: String,
    pub architecture: String,
    pub layout: ModelLayout,
    pub weights: Vec<f32>,
    pub overrides: crate::aggregation::AggregationOverrides,
    pub normalisation: NormState,
}

impl Handler<CreateModel> for Hub {
    type Result = ResponseActFuture<Self, Result<u64, Refusal>>;
    fn handle(&mut self, m: CreateModel, _: &mut Self::Context) -> Self::Result {
        if self.models.contains_key(&m.name) {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::Conflict,
                format!("model `{}` already exists", m.name),
            ))));
        }
        if self.models.len() >= self.cfg.hub.max_models {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::Conflict,
                format!(
                    "the hub already serves {} models (hub.max_models)",
                    self.models.len()
                ),
            ))));
        }
        let settings = self.cfg.aggregation_settings(&m.overrides);
        if let Err(e) = settings.validate() {
            return Box::pin(fut::ready(Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("aggregation.{e}"),
            ))));
        }
        let mut meta = std::collections::HashMap::new();
        meta.insert("version".to_string(), "0".to_string());
        let weights = Arc::new(m.weights);
        let encoded = match Encoded::of(&m.layout, &weights, Some(&meta)) {
            Ok(e) => e,
            Err(e) => return Box::pin(fut::ready(Err(Refusal::new(e.code, e.message)))),
        };
        let row = ModelRow {
            name: m.name.clone(),
            architecture: m.architecture.clone(),
            layout: serde_json::to_string(&m.layout).unwrap_or_default(),
            settings: serde_json::to_string(&m.overrides).ok(),
            created_at: crate::db::now(),
            normalisation: m.normalisation.to_stored(),
            evalset: None,
        };
        let eval = state::evaluate_builtin(
            &m.layout,
            &weights,
            self.test_data.as_deref(),
            m.normalisation.frozen(),
        );
        let metrics = VersionMetrics::evaluated(eval.as_ref()).to_json();
        let persister = self.persister.clone();
        let msg = persister::CreateModel {
            row,
            weights: encoded.clone(),
            metrics: metrics.to_string(),
        };
        // Reserve the name so a concurrent create gets a conflict.
        let overrides = m.overrides.clone();
        let mut state = ModelState::new(
            m.name.clone(),
            m.architecture.clone(),
            m.layout.clone(),
            settings,
            0,
            weights,
            encoded,
        );
        state.overrides = Some(overrides);
        state.norm = m.normalisation;
        self.models.insert(m.name.clone(), state);
        let name = m.name;
        Box::pin(
            async move { persister.send(msg).await }
                .into_actor(self)
                .map(move |res, act, _| match res {
                    Ok(Ok(())) => {
                        log::info!("model {name} created");
                        act.gauges(&name);
                        Ok(0)
                    }
                    Ok(Err(e)) => {
                        act.models.remove(&name);
                        Err(Refusal::new(ErrorCode::Internal, e.to_string()))
                    }
                    Err(e) => {
                        act.models.remove(&name);
                        Err(Refusal::new(ErrorCode::ShuttingDown, e.to_string()))
                    }
                }),
        )
    }
}

#[derive(Message)]
#[rtype(result = "Result<i64, Refusal>")]
pub struct RecordHarnessRun(pub NewHarnessRun);

impl Handler<RecordHarnessRun> for Hub {
    type Result = ResponseActFuture<Self, Result<i64, Refusal>>;
    fn handle(&mut self, m: RecordHarnessRun, _: &mut Self::Context) -> Self::Result {
        let persister = self.persister.clone();
        let (scenario, passed, acc) = (m.0.scenario.clone(), m.0.passed, m.0.collective_accuracy);
        Box::pin(
            async move { persister.send(persister::InsertHarnessRun(m.0)).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    let id = persisted(res)?;
                    act.event(HubEvent::HarnessRun {
                        id,
                        scenario,
                        passed,
                        collective_accuracy: acc,
                    });
                    Ok(id)
                }),
        )
    }
}

/// Deletes a recorded harness run through the hub, so that the deletion
/// is published like the recording was (dashboards drop the row).
#[derive(Message)]
#[rtype(result = "Result<bool, Refusal>")]
pub struct DeleteHarnessRun(pub i64);

impl Handler<DeleteHarnessRun> for Hub {
    type Result = ResponseActFuture<Self, Result<bool, Refusal>>;
    fn handle(&mut self, m: DeleteHarnessRun, _: &mut Self::Context) -> Self::Result {
        let persister = self.persister.clone();
        let id = m.0;
        Box::pin(
            async move { persister.send(persister::DeleteHarnessRun(id)).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    let deleted = persisted(res)?;
                    if deleted {
                        act.event(HubEvent::HarnessRunDeleted { id });
                    }
                    Ok(deleted)
                }),
        )
    }
}

/// Applies a re-read configuration: live keys change now.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct ApplyConfig(pub Config);

impl Handler<ApplyConfig> for Hub {
    type Result = Vec<String>;
    fn handle(&mut self, ApplyConfig(new): ApplyConfig, ctx: &mut Self::Context) -> Vec<String> {
        let mut changed = Vec::new();
        for (name, m) in self.models.iter_mut() {
            // Models created through the API keep their own overrides over
            // the new defaults; config models follow the file.
            let s: AggregationSettings = match (&m.overrides, new.models.contains_key(name)) {
                (Some(o), false) => new.aggregation_settings(o),
                _ => new.aggregation_for(name),
            };
            let keys = s.changed_keys(&m.settings);
            if !keys.is_empty() {
                changed.push(format!(
                    "models.{name} aggregation settings ({})",
                    keys.join(", ")
                ));
                m.settings = s;
            }
        }
        if new.hub.open_registration != self.cfg.hub.open_registration {
            changed.push("hub.open_registration".into());
        }
        if new.hub.allowed_trainers != self.cfg.hub.allowed_trainers {
            changed.push("hub.allowed_trainers".into());
        }
        self.cfg = new;
        let names: Vec<String> = self.models.keys().cloned().collect();
        for n in names {
            self.maybe_fold(&n, ctx);
        }
        changed
    }
}

/// Tells every session the hub is going away and stops accepting updates.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Shutdown;

impl Handler<Shutdown> for Hub {
    type Result = usize;
    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) -> usize {
        self.stopping = true;
        self.event(HubEvent::HubStopping);
        for s in self.sessions.values() {
            s.addr.do_send(ToSession::Goodbye);
        }
        self.goodbye_evaluators();
        self.sessions.len()
    }
}
