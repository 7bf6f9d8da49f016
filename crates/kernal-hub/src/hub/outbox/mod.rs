//! What a trainer connection has to send, and the policy of when versions go
//! out. The hub pushes a new version straight into every connection's
//! [`Outbox`] (not through a thousand actor messages); the HTTP dispatcher
//! pulls frames from its [`OutboxBody`], slices of one shared buffer at a
//! time, so a 40 MB model sent to 50 trainers is never copied per connection.
//!
//! Replies (acks, errors, pongs) are counted in bytes: a client that sends
//! without ever reading would otherwise grow its queue without bound, so past
//! `max_outbound_bytes` the connection is aborted (`slow_consumer`).

mod body;
mod queue;
mod socket;

pub use self::body::OutboxBody;
pub use self::queue::{InFlight, Outbox, OUT_CHUNK};
pub use self::socket::{remember_socket, ConnFd, PeerSocket};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::encoded::Encoded;
    use crate::hub::metrics::HotMetrics;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::time::Instant;

    fn outbox(hold_ms: u64) -> Arc<Outbox> {
        Outbox::new(Arc::default(), Duration::from_millis(hold_ms), 1 << 20)
    }

    /// Everything the body yields until it ends.
    async fn drain(body: &mut OutboxBody) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(Ok(b)) = body.next().await {
            assert!(b.len() <= OUT_CHUNK + 16);
            all.extend_from_slice(&b);
        }
        all
    }

    /// What the body has ready within `ms` of (paused) time, without ending it.
    async fn ready_within(body: &mut OutboxBody, ms: u64) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(ms);
        while let Ok(Some(Ok(b))) = tokio::time::timeout_at(deadline, body.next()).await {
            got.extend_from_slice(&b);
        }
        got
    }

    #[tokio::test(start_paused = true)]
    async fn a_version_waits_while_an_update_is_in_flight() {
        let out = outbox(0);
        let mut body = OutboxBody::new(out.clone());
        out.welcome(Bytes::from_static(b"w"), Bytes::from_static(b"0"));
        let update = out.update_started();
        out.model(Bytes::from_static(b"m1"), Bytes::from_static(b"1"));
        out.model(Bytes::from_static(b"m2"), Bytes::from_static(b"2"));
        out.text("ack".into());
        drop(update);
        out.finish();
        let expect: Vec<u8> = [
            &[0x81, 1, b'w', 0x82, 1, b'0'][..],
            &[0x81, 3, b'a', b'c', b'k'],
            &[0x81, 2, b'm', b'2', 0x82, 1, b'2'],
        ]
        .concat();
        assert_eq!(
            drain(&mut body).await,
            expect,
            "the ack first, then only the newest version"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trainer_still_working_on_a_version_gets_newer_ones_with_its_ack_or_after_the_hold() {
        let out = outbox(300);
        let mut body = OutboxBody::new(out.clone());
        out.welcome(Bytes::from_static(b"w"), Bytes::from_static(b"0"));
        assert_eq!(
            ready_within(&mut body, 20).await,
            [0x81, 1, b'w', 0x82, 1, b'0']
        );
        // Still training on the welcome's version: v1 and v2 wait, only the
        // newest is kept.
        out.model(Bytes::from_static(b"m1"), Bytes::from_static(b"1"));
        out.model(Bytes::from_static(b"m2"), Bytes::from_static(b"2"));
        assert!(ready_within(&mut body, 50).await.is_empty());
        // Its update arrives and is answered: the newest version follows the ack.
        let update = out.update_started();
        out.text("ack".into());
        drop(update);
        assert_eq!(
            ready_within(&mut body, 50).await,
            [
                &[0x81, 3, b'a', b'c', b'k'][..],
                &[0x81, 2, b'm', b'2', 0x82, 1, b'2']
            ]
            .concat()
        );
        // A trainer that does not answer still gets v3, once the hold of
        // v2 (sent 50 ms ago) is over, and not before.
        let pushed = Instant::now();
        out.model(Bytes::from_static(b"m3"), Bytes::from_static(b"3"));
        assert!(ready_within(&mut body, 249).await.is_empty());
        assert_eq!(
            ready_within(&mut body, 1000).await,
            [0x81, 2, b'm', b'3', 0x82, 1, b'3']
        );
        assert_eq!(pushed.elapsed(), Duration::from_millis(1249));
        // Having answered every version it got, the next one goes at once.
        drop(out.update_started());

        out.model(Bytes::from_static(b"m4"), Bytes::from_static(b"4"));
        assert_eq!(
            ready_within(&mut body, 1).await,
            [0x81, 2, b'm', b'4', 0x82, 1, b'4']
        );
        // An update its session refuses (bad shape, NaN) answers v4 too: v5,
        // held meanwhile, follows the error at once.
        out.model(Bytes::from_static(b"m5"), Bytes::from_static(b"5"));
        assert!(ready_within(&mut body, 50).await.is_empty());
        out.text("err".into());
        out.update_refused();
        assert_eq!(
            ready_within(&mut body, 1).await,
            [
                &[0x81, 3, b'e', b'r', b'r'][..],
                &[0x81, 2, b'm', b'5', 0x82, 1, b'5']
            ]
            .concat()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn outbox_writes_frames_and_keeps_only_the_newest_model() {
        let out = outbox(0);
        let mut body = OutboxBody::new(out.clone());
        out.model(Bytes::from_static(b"m0"), Bytes::from(vec![0u8; 10]));
        out.text("hi".into());
        out.welcome(Bytes::from_static(b"w"), Bytes::from_static(b"x"));
        out.model(Bytes::from_static(b"m1"), Bytes::from(vec![1u8; 10]));
        // A version in two parts (a header and a view of the weights) is
        // one frame.
        let parts = Encoded {
            head: Bytes::from(vec![2u8; 1_000]),
            body: Bytes::from(vec![2u8; 299_000]),
        };
        out.model(Bytes::from_static(b"m2"), parts);
        out.close(1000, "bye");
        out.text("after close".into());
        let wire = drain(&mut body).await;
        let mut expect = Vec::new();
        expect.extend_from_slice(&[0x81, 2]);
        expect.extend_from_slice(b"hi");
        // The welcome comes before the version pushed ahead of it.
        expect.extend_from_slice(&[0x81, 1, b'w', 0x82, 1, b'x']);
        expect.extend_from_slice(&[0x81, 2]);
        expect.extend_from_slice(b"m2");
        expect.extend_from_slice(&[0x82, 127]);
        expect.extend_from_slice(&300_000u64.to_be_bytes());
        expect.extend(std::iter::repeat_n(2u8, 300_000));
        expect.extend_from_slice(&[0x88, 5, 0x03, 0xE8]);
        expect.extend_from_slice(b"bye");
        assert_eq!(wire.len(), expect.len());
        assert!(wire == expect);
    }

    /// A client that never reads: replies pile up until the bound, then the
    /// queue is dropped and the body ends with an error (connection dropped).
    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_is_dropped_past_the_bound() {
        let hot: Arc<HotMetrics> = Arc::default();
        let out = Outbox::new(hot.clone(), Duration::ZERO, 10_000);
        let mut body = OutboxBody::new(out.clone());
        for _ in 0..99 {
            out.text("x".repeat(100));
        }
        assert!(!out.aborted());
        assert_eq!(out.queued_bytes(), 9_900);
        // Reading some makes room: the bound is on what waits, not on totals.
        for _ in 0..50 {
            assert!(matches!(body.next().await, Some(Ok(_))));
        }
        for _ in 0..50 {
            out.text("x".repeat(100));
        }
        assert!(!out.aborted());
        out.text("x".repeat(200));
        assert!(out.aborted());
        assert_eq!(out.queued_bytes(), 0, "the queue is dropped at once");
        assert!(matches!(body.next().await, Some(Err(_))));
        assert!(body.next().await.is_none());
        out.text("more".into());
        assert_eq!(out.queued_bytes(), 0, "nothing is queued after the abort");
        assert_eq!(hot.slow_consumers(), 1);
    }

    /// Whether `bytes` hold a text frame with `text` in it.
    fn has(bytes: &[u8], text: &str) -> bool {
        bytes.windows(text.len()).any(|w| w == text.as_bytes())
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_pacers_limit_new_work_waits_its_turn() {
        use crate::hub::pacer::Pacer;
        let pacer = Pacer::new(1);
        let paced = || {
            Outbox::paced(
                Arc::default(),
                Duration::ZERO,
                1 << 20,
                None,
                Some(pacer.clone()),
            )
        };
        let (a, b, c) = (paced(), paced(), paced());
        let (mut ba, mut bb, mut bc) = (
            OutboxBody::new(a.clone()),
            OutboxBody::new(b.clone()),
            OutboxBody::new(c.clone()),
        );
        a.welcome(Bytes::from_static(b"wa"), Bytes::from_static(b"0"));
        b.welcome(Bytes::from_static(b"wb"), Bytes::from_static(b"0"));
        assert!(has(&ready_within(&mut ba, 10).await, "wa"));
        assert!(has(&ready_within(&mut bb, 10).await, "wb"));
        // a's update fills the one place: b's next version and c's welcome wait.
        let in_a = a.update_started();
        drop(b.update_started());
        b.model(Bytes::from_static(b"m1"), Bytes::from_static(b"1"));
        c.welcome(Bytes::from_static(b"wc"), Bytes::from_static(b"0"));
        assert!(
            ready_within(&mut bb, 50).await.is_empty(),
            "b waits for a place"
        );
        assert!(
            ready_within(&mut bc, 50).await.is_empty(),
            "c's welcome waits too"
        );
        assert_eq!(pacer.waiting(), 2);
        // a's answer frees the place: b (first in line) gets it, and a's own
        // next version queues behind c.
        a.model(Bytes::from_static(b"m1"), Bytes::from_static(b"1"));
        drop(in_a);
        assert!(has(&ready_within(&mut bb, 10).await, "m1"));
        assert!(ready_within(&mut ba, 10).await.is_empty());
        drop(b.update_started());
        assert!(has(&ready_within(&mut bc, 10).await, "wc"));
        // A trainer holds one place however many updates it has in flight;
        // a session that stops with them unanswered drops their guards, and
        // the place comes back although the connection lives on.
        let (in_c, in_c2) = (c.update_started(), c.update_started());
        assert_eq!(pacer.pending(), 1, "one place per trainer");
        drop((in_c, in_c2));
        drop(bc);
        assert_eq!(pacer.pending(), 0);
        assert!(has(&ready_within(&mut ba, 10).await, "m1"));
        assert_eq!(pacer.waiting(), 0);
    }
}
