//! Deleting a model (`DELETE /v1/models/{m}`, admin). The model leaves the
//! hub's memory first, so no hello joins it and no update is admitted while
//! its rows go; the persister then removes its versions, ledger rows,
//! evaluations and blob files in one transaction and records the deletion
//! (`model_deletions`), and the event feed says so (`model_deleted`).

use actix::prelude::*;

use super::core::{Hub, ToSession};
use crate::db::ModelDeletion;
use crate::error::DbError;
use crate::hub::metrics::HubEvent;
use crate::hub::persister;
use crate::protocol::{ErrorCode, Refusal};

#[derive(Message)]
#[rtype(result = "Result<ModelDeletion, Refusal>")]
pub struct DeleteModel {
    pub name: String,
    /// Disconnect the model's trainers (`model_deleted`) instead of
    /// refusing while they are connected.
    pub force: bool,
}

impl Handler<DeleteModel> for Hub {
    type Result = ResponseActFuture<Self, Result<ModelDeletion, Refusal>>;
    fn handle(&mut self, m: DeleteModel, _: &mut Self::Context) -> Self::Result {
        let refused = |code, message: String| -> Self::Result {
            Box::pin(fut::ready(Err(Refusal::new(code, message))))
        };
        let Some(model) = self.models.get(&m.name) else {
            return refused(ErrorCode::NotFound, format!("no model named `{}`", m.name));
        };
        if self.cfg.models.contains_key(&m.name) {
            return refused(
                ErrorCode::Conflict,
                format!(
                    "model `{}` is defined in the configuration ([models.{}]) and would be made \
                     again at the next start: remove it there",
                    m.name, m.name
                ),
            );
        }
        if model.folding {
            return refused(
                ErrorCode::Conflict,
                format!(
                    "a version of `{}` is being made (a fold or a rollback): delete it again in a moment",
                    m.name
                ),
            );
        }
        let mut connected: Vec<&String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.model == m.name)
            .map(|(trainer, _)| trainer)
            .collect();
        connected.sort();
        if !connected.is_empty() && !m.force {
            let names: Vec<&str> = connected.iter().map(|s| s.as_str()).collect();
            return refused(
                ErrorCode::ModelInUse,
                format!(
                    "{} trainer(s) are connected to `{}` ({}): stop them first, or delete with \
                     ?force=true to disconnect them",
                    names.len(),
                    m.name,
                    names.join(", ")
                ),
            );
        }
        let disconnected = connected.len();
        for s in self.sessions.values().filter(|s| s.model == m.name) {
            s.addr.do_send(ToSession::Close {
                code: ErrorCode::ModelDeleted,
                message: format!("an administrator deleted model `{}`", m.name),
            });
        }
        let gone = format!("an administrator deleted model `{}`", m.name);
        self.close_evaluators(&m.name, ErrorCode::ModelDeleted, &gone);
        self.models.remove(&m.name);
        // Its updates still waiting for the group commit are not stored:
        // their trainers were just disconnected.
        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.to_persist)
            .into_iter()
            .partition(|(rec, _)| rec.model == m.name);
        self.to_persist = keep;
        for (_, reply) in gone {
            let _ = reply.send(Err(DbError::Storage(format!(
                "model `{}` was deleted",
                m.name
            ))));
        }
        log::info!(
            "model {} deleted ({disconnected} trainer(s) disconnected)",
            m.name
        );
        let persister = self.persister.clone();
        let msg = persister::DeleteModel {
            model: m.name.clone(),
            forced: m.force,
            disconnected: disconnected as i64,
        };
        let name = m.name;
        Box::pin(
            async move { persister.send(msg).await }
                .into_actor(self)
                .map(move |res, act, _| match res {
                    Ok(Ok(Some(record))) => {
                        act.event(HubEvent::ModelDeleted {
                            model: name,
                            forced: record.forced,
                            disconnected,
                            versions: record.versions,
                            updates: record.updates,
                        });
                        Ok(record)
                    }
                    Ok(Ok(None)) => Err(Refusal::new(
                        ErrorCode::Internal,
                        format!("model `{name}` was served but not stored"),
                    )),
                    Ok(Err(e)) => Err(Refusal::new(
                        ErrorCode::Internal,
                        format!("model `{name}` left the hub but its rows could not be deleted (they come back at the next start): {e}"),
                    )),
                    Err(e) => Err(Refusal::new(ErrorCode::ShuttingDown, e.to_string())),
                }),
        )
    }
}
