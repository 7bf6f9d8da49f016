//! An update the session refused (bad header, shape, NaN...) is answered
//! only once the hub looked in the ledger: a resend of an update accepted
//! before gets the `ack` with `duplicate: true` an ordinary resend gets,
//! anything else the session's error.

use actix::prelude::*;

use super::actor::TrainerSession;
use crate::hub::hub_actor;
use crate::protocol::ServerMessage;

impl TrainerSession {
    /// Sends `refusal` to the hub and answers the trainer with what it
    /// says: the duplicate's `ack`, or the error (naming `reply_id`).
    pub(super) fn refuse_update(
        &mut self,
        ctx: &mut Context<Self>,
        refusal: hub_actor::SessionRefusal,
        reply_id: Option<String>,
    ) {
        let (code, message) = (refusal.code, refusal.message.clone());
        // Counted like any update in flight: the newest version waits for
        // this answer, as it waits for an ack.
        let in_flight = self.outbox.update_started();
        let fut = self.hub.send(refusal);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            match (res, reply_id) {
                (Ok(Ok(a)), Some(update_id)) if a.duplicate => act.send(&ServerMessage::Ack {
                    update_id,
                    base_version: a.base_version,
                    staleness: a.staleness,
                    duplicate: true,
                    status: a.status,
                }),
                (Ok(Err(r)), reply_id) => act.error(ctx, r.code, r.message, reply_id),
                // No answer from the hub (stopping): the session's own
                // verdict stands.
                (_, reply_id) => act.error(ctx, code, message, reply_id),
            }
            drop(in_flight);
        }));
    }
}
