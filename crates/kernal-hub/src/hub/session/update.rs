//! A trainer's update: its header, then its binary frame checked (shapes,
//! finite values, norm), stored and handed to the hub, answered with an
//! `ack` or a refusal.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;

use super::actor::TrainerSession;
use super::parse::{validate_update_header, UpdateHeader};
use super::phase::{Phase, Ready};
use crate::hub::hub_actor;
use crate::hub::ws::spool::SpoolFile;
use crate::protocol::{ErrorCode, Refusal, ServerMessage};

/// Blob files up to this size are written on the session's own thread.
const INLINE_BLOB_WRITE: usize = 256 * 1024;

/// Blob files being written at once, over all sessions.
static BLOB_WRITES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// The hub's record of an update `h` the session refused.
fn refusal(
    r: &Ready,
    h: &UpdateHeader,
    bytes: u64,
    code: ErrorCode,
    message: String,
) -> hub_actor::SessionRefusal {
    hub_actor::SessionRefusal {
        trainer: r.name.clone(),
        model: r.model.clone(),
        update_id: h.update_id.clone(),
        base_version: h.base_version,
        num_examples: h.num_examples,
        bytes,
        code,
        message,
    }
}

impl TrainerSession {
    /// An update header from a welcomed trainer: checked, then held until
    /// its binary frame arrives.
    pub(super) fn on_update_header(&mut self, h: UpdateHeader, ctx: &mut Context<Self>) {
        let Phase::Ready(r) = &mut self.phase else {
            return;
        };
        let previous = r.pending.take();
        if let Err(Refusal { code, message }) = validate_update_header(&h) {
            let refusal = refusal(r, &h, 0, code, message);
            // Its payload frame will follow; swallow it quietly.
            r.pending = Some(UpdateHeader::swallow());
            return self.refuse_update(ctx, refusal, Some(h.update_id));
        }
        r.pending = Some(h);
        if let Some(p) = previous.filter(|p| !p.is_swallow()) {
            self.error(
                ctx,
                ErrorCode::ExpectedBinary,
                "an `update` must be followed by its binary frame; the earlier update was dropped"
                    .into(),
                Some(p.update_id),
            );
        }
    }

    /// A binary frame the reader could not keep (its spool file could not
    /// be written): refused as the update its header announced, so the
    /// trainer hears which update to send again.
    pub(super) fn on_binary_refused(
        &mut self,
        code: ErrorCode,
        message: String,
        ctx: &mut Context<Self>,
    ) {
        let Phase::Ready(r) = &mut self.phase else {
            return self.error(ctx, code, message, None);
        };
        let Some(h) = r.pending.take() else {
            return self.error(ctx, code, message, None);
        };
        if h.is_swallow() {
            return;
        }
        let refusal = refusal(r, &h, 0, code, message);
        self.refuse_update(ctx, refusal, Some(h.update_id));
    }

    /// An update's payload; `spooled` is its file when the reader wrote it
    /// to one as it arrived (it becomes the update's blob as it is).
    pub(super) fn on_binary(
        &mut self,
        payload: Bytes,
        spooled: Option<Arc<SpoolFile>>,
        ctx: &mut Context<Self>,
    ) {
        if matches!(self.phase, Phase::Evaluating(_)) {
            return self.on_evaluator_binary(ctx);
        }
        let Phase::Ready(r) = &mut self.phase else {
            return self.error(
                ctx,
                ErrorCode::UnexpectedBinary,
                "binary frames are only accepted after `welcome`, following an `update`".into(),
                None,
            );
        };
        let Some(h) = r.pending.take() else {
            return self.error(
                ctx,
                ErrorCode::UnexpectedBinary,
                "a binary frame must follow an `update` message".into(),
                None,
            );
        };
        if h.is_swallow() {
            // The payload of an update whose header was refused.
            return;
        }
        let (trainer, model) = (r.name.clone(), r.model.clone());
        // Shapes, dtypes, finite values and the norm, in one pass.
        let mut release = crate::mapped::release;
        let window = crate::mapped::window_for(&payload, &mut release);
        let norm = match r.layout.check_sum_squares_windowed(&payload, window) {
            Ok(s) => s.sqrt(),
            Err(e) => {
                let refusal = refusal(r, &h, payload.len() as u64, e.code, e.message);
                return self.refuse_update(ctx, refusal, Some(h.update_id));
            }
        };
        let update_id = h.update_id.clone();
        let sub = hub_actor::SubmitUpdate {
            session_id: self.id.clone(),
            trainer,
            model,
            update_id: h.update_id,
            base_version: h.base_version,
            num_examples: h.num_examples,
            loss: h.loss,
            norm,
            payload,
            payload_file: None,
        };
        let (hub, blobs) = (self.hub.clone(), self.blobs.clone());
        let in_flight = self.outbox.update_started();
        let received = Instant::now();
        let fut = async move {
            let mut sub = sub;
            // A large payload goes to its file here, on a blocking thread of
            // its own, so writing many at once proceeds in parallel and the
            // one SQLite writer only records the name.
            if let Some(file) = spooled {
                // Written as it arrived: the spool file is the blob.
                sub.payload_file = Some(file.keep());
            } else if blobs.wants(sub.payload.len()) {
                let (b, p) = (blobs.clone(), sub.payload.clone());
                let written = if p.len() <= INLINE_BLOB_WRITE {
                    // A page-cache write this small costs less than handing
                    // it to another thread and back.
                    b.put(&p).map_err(|e| (e.code(), e.to_string()))
                } else {
                    // A few at a time: hundreds of threads writing into one
                    // directory at once spend their time on its lock.
                    let _writing = BLOB_WRITES.acquire().await;
                    actix_web::rt::task::spawn_blocking(move || b.put(&p))
                        .await
                        .map_err(|e| (ErrorCode::Internal, e.to_string()))
                        .and_then(|r| r.map_err(|e| (e.code(), e.to_string())))
                };
                match written {
                    Ok(name) => sub.payload_file = Some(name),
                    Err((code, e)) => {
                        return Ok(Err(Refusal::new(
                            code,
                            format!("the update could not be stored: {e}"),
                        )));
                    }
                }
            }
            hub.send(sub).await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(Ok(a)) => act.send(&ServerMessage::Ack {
                    update_id,
                    base_version: a.base_version,
                    staleness: a.staleness,
                    duplicate: a.duplicate,
                    status: a.status,
                }),
                // A refused update is this message's error, not the connection's.
                Ok(Err(Refusal { code, message })) => act.send(&ServerMessage::Error {
                    code,
                    message,
                    update_id: Some(update_id),
                    fatal: false,
                }),
                Err(e) => act.error(
                    ctx,
                    ErrorCode::ShuttingDown,
                    format!("hub unavailable: {e}"),
                    Some(update_id),
                ),
            }
            drop(in_flight);
            act.hot.answered(received.elapsed());
        }));
    }
}
