//! Refusing an update: unless the ledger already accepted its id. A trainer
//! that resends an update it was not sure arrived must get the duplicate
//! answer an ordinary resend gets, whatever the resend carries (NaN, a wrong
//! shape, a base that went stale since): refusing it would put a refused row
//! beside the accepted one and tell the trainer its accepted update failed.
//! Refusals are rare, so this costs one indexed lookup only there; accepted
//! updates find duplicates in their insert as before.

use actix::prelude::*;

use super::core::Hub;
use super::updates::AckInfo;
use crate::db::InsertOutcome;
use crate::hub::metrics::HubEvent;
use crate::hub::persister::{self, UpdateRecord};
use crate::protocol::{ErrorCode, Refusal};

impl Hub {
    /// Records `rec` as refused with `code` and answers the refusal, or, when
    /// the same (model, trainer, update_id) was accepted before, answers the
    /// duplicate and records nothing.
    pub(super) fn refuse(
        &mut self,
        rec: UpdateRecord,
        code: ErrorCode,
        message: String,
    ) -> ResponseActFuture<Self, Result<AckInfo, Refusal>> {
        // Accepted a moment ago and still waiting for its batch to be sent
        // to the persister: its row is not in the ledger yet.
        let waiting = self.to_persist.iter().find(|(r, _)| {
            !rec.update_id.is_empty()
                && r.update_id == rec.update_id
                && r.trainer == rec.trainer
                && r.model == rec.model
        });
        if let Some((r, _)) = waiting {
            let ack = AckInfo {
                staleness: r.staleness,
                duplicate: true,
                status: "pending".into(),
                base_version: r.base_version,
            };
            return Box::pin(fut::ready(Ok(ack)));
        }
        let mut row = rec.clone();
        row.payload = None;
        row.payload_file = None;
        row.refusal = Some((code.as_str().to_string(), message.clone()));
        // Batches sent to the persister before this are handled before it.
        let fut = self.persister.send(persister::RecordRefusal(row));
        Box::pin(fut.into_actor(self).map(move |res, act, _| {
            match res {
                Ok(Ok(Some(InsertOutcome::Duplicate {
                    status,
                    staleness,
                    base_version,
                }))) => {
                    log::debug!(
                        "update {} from {} refused ({code}) but accepted before: answered as a duplicate",
                        rec.update_id,
                        rec.trainer
                    );
                    return Ok(AckInfo {
                        staleness: staleness as u64,
                        duplicate: true,
                        status,
                        base_version: base_version as u64,
                    });
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => log::warn!("could not record refused update: {e}"),
                Err(e) => log::warn!("could not record refused update: {e}"),
            }
            act.refused(&rec, code, &message);
            Err(Refusal { code, message })
        }))
    }

    /// The live counters and the event feed of a refusal.
    fn refused(&mut self, rec: &UpdateRecord, code: ErrorCode, message: &str) {
        let live = self.live.entry(rec.trainer.clone()).or_default();
        live.refused += 1;
        live.last_refusal = Some(format!("{code}: {message}"));
        self.event(HubEvent::UpdateRefused {
            trainer: rec.trainer.clone(),
            model: rec.model.clone(),
            update_id: Some(rec.update_id.clone()).filter(|s| !s.is_empty()),
            code: code.as_str().to_string(),
            message: message.to_string(),
        });
    }
}
