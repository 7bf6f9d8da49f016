//! The reader on paused time: framing rules, limits and the budget.

use super::super::{frame_header, Budget};
use super::*;

pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = frame_header(opcode, payload.len(), Some(mask));
    if !fin {
        f[0] &= 0x7F;
    }
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn limits() -> ReaderLimits {
    ReaderLimits {
        max_message: 1 << 20,
        max_prehello: 1024,
        max_fragments: 3,
        budget_wait: Duration::from_secs(5),
        spool: None,
    }
}

/// A reader over `bytes` delivered in chunks of `chunk` bytes, already
/// past its hello unless `prehello`.
fn reader(
    bytes: Vec<u8>,
    chunk: usize,
    budget: &Budget,
    prehello: bool,
) -> FrameReader<impl Stream<Item = Result<Bytes, ReadError>> + Unpin> {
    let chunks: Vec<Result<Bytes, ReadError>> = bytes
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let activity = Activity::new();
    if !prehello {
        activity.authenticate();
    }
    FrameReader::new(
        futures_util::stream::iter(chunks),
        activity,
        limits(),
        Claim::new(budget.clone(), 1.0),
    )
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn reads_frames_across_any_chunking() {
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut wire = client_frame(true, OP_TEXT, b"{\"type\":\"ping\"}", [9, 8, 7, 6]);
    wire.extend(client_frame(true, OP_PING, b"hi", [1, 1, 1, 1]));
    wire.extend(client_frame(false, OP_BINARY, &big[..70_000], [5, 6, 7, 8]));
    wire.extend(client_frame(true, OP_CONT, &big[70_000..], [2, 3, 4, 5]));
    wire.extend(client_frame(true, OP_CLOSE, &[3, 232], [0, 0, 0, 1]));
    for chunk in [1, 7, 4096, 1 << 20] {
        let budget = Budget::new(1 << 20);
        let mut r = reader(wire.clone(), chunk, &budget, false);
        run(async {
            assert!(
                matches!(r.next().await, Some(Incoming::Text(t)) if &t[..] == b"{\"type\":\"ping\"}")
            );
            assert!(matches!(r.next().await, Some(Incoming::Ping(p)) if &p[..] == b"hi"));
            match r.next().await {
                Some(Incoming::Binary(b)) => {
                    assert_eq!(&b[..], &big[..]);
                    assert_eq!(budget.in_use(), 196 * 1024, "a held payload holds budget");
                    drop(b);
                    assert_eq!(budget.in_use(), 0, "dropping it gives the budget back");
                }
                other => panic!("expected binary, got {other:?}"),
            }
            assert!(matches!(r.next().await, Some(Incoming::Close)));
            assert!(r.next().await.is_none());
        });
    }
}

#[test]
fn refuses_what_breaks_the_rules() {
    let budget = Budget::new(4 << 20);
    // Over the message limit: fatal, and reading stops.
    let mut r = reader(
        client_frame(true, OP_BINARY, &vec![0u8; (1 << 20) + 1], [1, 2, 3, 4]),
        65536,
        &budget,
        false,
    );
    run(async {
        assert!(matches!(
            r.next().await,
            Some(Incoming::Refused(ErrorCode::MessageTooLarge, _))
        ));
        assert!(r.next().await.is_none());
    });
    // Too many fragments (limit 3).
    let mut wire = client_frame(false, OP_TEXT, b"a", [1, 2, 3, 4]);
    for _ in 0..3 {
        wire.extend(client_frame(false, OP_CONT, b"", [1, 2, 3, 4]));
    }
    let mut r = reader(wire, 3, &budget, false);
    run(async {
        assert!(matches!(
            r.next().await,
            Some(Incoming::Refused(ErrorCode::TooManyFragments, _))
        ));
    });
    // Unmasked client frame.
    let mut r = reader(vec![0x82, 0x01, 0xFF], 3, &budget, false);
    run(async {
        assert!(matches!(
            r.next().await,
            Some(Incoming::Refused(ErrorCode::BadFrame, _))
        ));
        assert!(r.next().await.is_none());
    });
    // A stray continuation is refused but the connection reads on.
    let mut wire = client_frame(true, OP_CONT, b"x", [1, 2, 3, 4]);
    wire.extend(client_frame(true, OP_TEXT, b"ok", [4, 3, 2, 1]));
    let mut r = reader(wire, 5, &budget, false);
    run(async {
        assert!(matches!(
            r.next().await,
            Some(Incoming::Refused(ErrorCode::BadJson, _))
        ));
        assert!(matches!(r.next().await, Some(Incoming::Text(t)) if &t[..] == b"ok"));
    });
    // End of stream in the middle of a frame.
    let mut r = reader(
        client_frame(true, OP_TEXT, b"hello", [1, 2, 3, 4])[..5].to_vec(),
        2,
        &budget,
        false,
    );
    run(async { assert!(r.next().await.is_none()) });
}

/// Before the hello: small messages only, refused on the header (nothing
/// of a 200 MB frame is read), fragmented or not, and no budget held.
#[test]
fn before_the_hello_only_small_messages_and_no_budget() {
    let budget = Budget::new(4 << 20);
    let mut wire = frame_header(OP_BINARY, 200_000_000, Some([1, 2, 3, 4]));
    wire.extend_from_slice(&[0u8; 100]);
    let mut r = reader(wire, 64, &budget, true);
    run(async {
        match r.next().await {
            Some(Incoming::Refused(ErrorCode::MessageTooLarge, m)) => {
                assert!(m.contains("before the hello"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(r.next().await.is_none());
    });
    let mut wire = client_frame(false, OP_TEXT, &[b'a'; 600], [1, 2, 3, 4]);
    wire.extend(client_frame(true, OP_CONT, &[b'a'; 600], [1, 2, 3, 4]));
    let mut r = reader(wire, 100, &budget, true);
    run(async {
        assert!(matches!(
            r.next().await,
            Some(Incoming::Refused(ErrorCode::MessageTooLarge, _))
        ));
    });
    let mut wire = client_frame(false, OP_TEXT, &[b'a'; 500], [1, 2, 3, 4]);
    wire.extend(client_frame(true, OP_CONT, &[b'a'; 500], [1, 2, 3, 4]));
    let mut r = reader(wire, 100, &budget, true);
    run(async {
        let m = r.next().await;
        assert!(matches!(&m, Some(Incoming::Text(t)) if t.len() == 1000));
        assert_eq!(budget.in_use(), 0);
    });
}

/// Fragments under 64 KiB count against the budget: a message made of
/// small fragments holds its bytes, and a second one waits for room.
#[test]
fn small_fragments_hold_budget_and_wait_for_room() {
    let budget = Budget::new(128 * 1024);
    let mut wire = Vec::new();
    for i in 0..3 {
        let fin = i == 2;
        let op = if i == 0 { OP_BINARY } else { OP_CONT };
        wire.extend(client_frame(fin, op, &[7u8; 30_000], [1, 2, 3, 4]));
    }
    let mut a = reader(wire.clone(), 8192, &budget, false);
    let mut b = reader(wire, 8192, &budget, false);
    run(async {
        let first = a.next().await;
        assert!(matches!(&first, Some(Incoming::Binary(x)) if x.len() == 90_000));
        assert_eq!(budget.in_use(), 88 * 1024);
        // b's fragments need 88 KiB; 40 KiB are free: it holds what it
        // got and, past the wait, gives up with `busy`.
        match b.next().await {
            Some(Incoming::Refused(ErrorCode::Busy, _)) => {}
            other => panic!("expected busy, got {other:?}"),
        }
        assert_eq!(budget.in_use(), 88 * 1024, "b's partial hold was released");
        drop(first);
        assert_eq!(budget.in_use(), 0);
    });
}

#[test]
fn budget_makes_the_second_large_payload_wait() {
    let budget = Budget::new(128 * 1024);
    let frame = client_frame(true, OP_BINARY, &vec![7u8; 100 * 1024], [1, 2, 3, 4]);
    let mut a = reader(frame.clone(), 8192, &budget, false);
    let mut b = reader(frame, 8192, &budget, false);
    run(async {
        let first = a.next().await;
        assert!(matches!(first, Some(Incoming::Binary(_))));
        let mut second = Box::pin(b.next());
        let waiting = tokio::time::timeout(Duration::from_secs(60), &mut second).await;
        assert!(
            waiting.is_err(),
            "no room until the first payload is dropped"
        );
        drop(first);
        assert!(matches!(second.await, Some(Incoming::Binary(_))));
    });
}

/// One connection may hold at most its share: with a share of half the
/// budget, a message over it is refused on its header.
#[test]
fn a_message_over_the_connections_share_is_refused() {
    let budget = Budget::new(256 * 1024);
    let activity = Activity::new();
    activity.authenticate();
    let wire = frame_header(OP_BINARY, 200 * 1024, Some([1, 2, 3, 4]));
    let mut r = FrameReader::new(
        futures_util::stream::iter(vec![Ok::<_, ReadError>(Bytes::from(wire))]),
        activity,
        limits(),
        Claim::new(budget.clone(), 0.5),
    );
    assert_eq!(r.max_message(), 128 * 1024);
    run(async {
        match r.next().await {
            Some(Incoming::Refused(ErrorCode::MessageTooLarge, m)) => {
                assert!(m.contains("share"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    });
    assert_eq!(budget.in_use(), 0);
}

#[test]
fn a_large_binary_message_is_spooled_to_its_file_and_holds_budget_while_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let mut wire = client_frame(true, OP_BINARY, &big, [5, 6, 7, 8]);
    wire.extend(client_frame(true, OP_BINARY, &big[..1000], [1, 2, 3, 4]));
    wire.extend(client_frame(true, OP_BINARY, &big, [3, 3, 3, 3]));
    for chunk in [7, 4096, 1 << 20] {
        let budget = Budget::new(1 << 20);
        let mut r = reader(wire.clone(), chunk, &budget, false);
        r.limits.spool = Some(SpoolDir {
            dir: dir.path().join("blobs"),
            min_bytes: 100_000,
        });
        run(async {
            let first = match r.next().await {
                Some(Incoming::Spooled(s)) => s,
                other => panic!("expected a spooled message, got {other:?}"),
            };
            assert_eq!(&first.bytes[..], &big[..]);
            assert!(crate::mapped::is_mapped(&first.bytes));
            assert_eq!(
                budget.in_use(),
                293 * 1024,
                "a spooled payload holds budget"
            );
            // Below the size it stays in the heap.
            assert!(matches!(r.next().await, Some(Incoming::Binary(b)) if b[..] == big[..1000]));
            let second = match r.next().await {
                Some(Incoming::Spooled(s)) => s,
                other => panic!("expected a spooled message, got {other:?}"),
            };
            let files = || std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
            assert_eq!(files(), 2);
            // A kept file is a blob; a dropped one is removed with its budget.
            let name = first.file.keep();
            drop(first);
            drop(second);
            assert_eq!(budget.in_use(), 0);
            assert_eq!(files(), 1);
            let path = dir.path().join("blobs").join(&name);
            assert_eq!(std::fs::read(&path).unwrap(), big);
            std::fs::remove_file(path).unwrap();
        });
    }
}

#[test]
fn a_message_that_cannot_be_spooled_is_refused_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let big = vec![7u8; 200_000];
    let mut wire = client_frame(true, OP_BINARY, &big, [1, 2, 3, 4]);
    wire.extend(client_frame(true, OP_TEXT, b"{}", [4, 3, 2, 1]));
    let budget = Budget::new(1 << 20);
    let mut r = reader(wire, 4096, &budget, false);
    r.limits.spool = Some(SpoolDir {
        dir: file.join("blobs"),
        min_bytes: 100_000,
    });
    run(async {
        match r.next().await {
            Some(Incoming::BinaryRefused(code, why)) => {
                assert_eq!(code, ErrorCode::StorageUnavailable);
                assert!(why.contains("could not be stored"), "{why}");
            }
            other => panic!("expected the message refused, got {other:?}"),
        }
        assert_eq!(budget.in_use(), 0, "a refused message holds no budget");
        assert!(matches!(r.next().await, Some(Incoming::Text(t)) if &t[..] == b"{}"));
    });
}

#[test]
fn a_spooled_message_never_finished_leaves_no_file_and_no_budget() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![9u8; 200_000];
    let mut wire = client_frame(true, OP_BINARY, &big, [1, 2, 3, 4]);
    wire.truncate(wire.len() - 100_000);
    let budget = Budget::new(1 << 20);
    let mut r = reader(wire, 4096, &budget, false);
    r.limits.spool = Some(SpoolDir {
        dir: dir.path().join("blobs"),
        min_bytes: 100_000,
    });
    run(async {
        assert!(r.next().await.is_none(), "the connection ended mid-message");
        assert_eq!(budget.in_use(), 0);
        let files = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
        assert_eq!(files, 0, "the half-written spool file is removed");
    });
}
