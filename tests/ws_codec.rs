//! The trainer endpoint's WebSocket reader is our own code on an open port,
//! so it is fuzzed: random frame streams, split at random points, read by
//! kernal's reader and by tungstenite's must give the same messages; the
//! same streams mutated (bytes flipped, cut, inserted) must never make the
//! reader panic, hang or allocate past its limits.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Cursor, Read, Write};
use std::time::Duration;

use bytes::Bytes;
use kernal_hub::hub::ws::{
    apply_mask, frame_header, Activity, Budget, Claim, FrameReader, Incoming,
};
use kernal_hub::hub::ws::{ReadError, ReaderLimits};
use proptest::prelude::*;
use tokio_tungstenite::tungstenite;

// ------------------------------------------------------------ allocations

/// Counts the bytes live on each thread: the reader runs on the test's own
/// thread (a current-thread runtime), so its peak is what it allocated.
struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn note(delta: i64) {
    // try_with: thread-locals may be gone while a thread exits.
    let _ = LIVE.try_with(|l| {
        let v = l.get() + delta;
        l.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as i64);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as i64 - layout.size() as i64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak bytes allocated (above the start) while running `f` on this thread.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, i64) {
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(|p| p.get()) - base;
    (out, peak)
}

// ------------------------------------------------------------ frames

/// One message as the protocol sees it.
#[derive(Debug, Clone, PartialEq)]
enum Msg {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close,
}

fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = frame_header(opcode, payload.len(), Some(mask));
    if !fin {
        f[0] &= 0x7F;
    }
    let start = f.len();
    f.extend_from_slice(payload);
    apply_mask(&mut f[start..], mask, 0);
    f
}

/// A message and how it is sent: the fragment sizes of a data message.
#[derive(Debug, Clone)]
struct Sent {
    msg: Msg,
    cuts: Vec<usize>,
    masks: Vec<[u8; 4]>,
}

fn sent() -> impl Strategy<Value = Sent> {
    let data = prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..300),
        1 => prop::collection::vec(any::<u8>(), 65_000..70_000),
    ];
    let msg = prop_oneof![
        4 => "\\PC{0,200}".prop_map(|s| Msg::Text(s.into_bytes())),
        4 => data.prop_map(Msg::Binary),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Msg::Ping),
        1 => Just(Msg::Pong),
    ];
    (
        msg,
        prop::collection::vec(0usize..100_000, 0..4),
        prop::collection::vec(any::<[u8; 4]>(), 5),
    )
        .prop_map(|(msg, cuts, masks)| Sent { msg, cuts, masks })
}

/// The wire bytes of a message: data messages split into fragments at
/// `cuts` (byte positions, kept in range), control frames whole.
fn encode(s: &Sent) -> Vec<u8> {
    let (op, body) = match &s.msg {
        Msg::Text(b) => (0x1, b.as_slice()),
        Msg::Binary(b) => (0x2, b.as_slice()),
        Msg::Ping(b) => return client_frame(true, 0x9, b, s.masks[0]),
        Msg::Pong => return client_frame(true, 0xA, b"", s.masks[0]),
        Msg::Close => return client_frame(true, 0x8, &1000u16.to_be_bytes(), s.masks[0]),
    };
    let mut cuts: Vec<usize> = s.cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.sort();
    cuts.dedup();
    let mut bounds = vec![0];
    bounds.extend(cuts.into_iter().filter(|c| *c > 0 && *c < body.len()));
    bounds.push(body.len());
    let n = bounds.len() - 1;
    let mut out = Vec::new();
    for (k, w) in bounds.windows(2).enumerate() {
        let opcode = if k == 0 { op } else { 0x0 };
        out.extend(client_frame(
            k == n - 1,
            opcode,
            &body[w[0]..w[1]],
            s.masks[(k + 1) % 5],
        ));
    }
    out
}

fn limits(max_message: usize) -> ReaderLimits {
    ReaderLimits {
        max_message,
        max_prehello: 1024,
        max_fragments: 64,
        budget_wait: Duration::from_secs(1),
        // Binary messages from 1,000 bytes go to files as they arrive: the
        // spooled path must read every framing the reference does.
        spool: Some(kernal_hub::hub::ws::spool::SpoolDir {
            dir: spool_dir().to_path_buf(),
            min_bytes: 1000,
        }),
    }
}

fn spool_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
}

/// What kernal's reader makes of `wire` delivered in `chunks`-sized pieces.
fn read_kernal(
    wire: &[u8],
    chunks: &[usize],
    max_message: usize,
) -> (Vec<Result<Msg, String>>, i64) {
    let mut pieces: Vec<Result<Bytes, ReadError>> = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while at < wire.len() {
        let n = chunks
            .get(k % chunks.len().max(1))
            .copied()
            .unwrap_or(4096)
            .max(1);
        let end = (at + n).min(wire.len());
        pieces.push(Ok(Bytes::copy_from_slice(&wire[at..end])));
        at = end;
        k += 1;
    }
    let budget = Budget::new(4 << 20);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let activity = Activity::new();
    activity.authenticate();
    let stream = futures_util::stream::iter(pieces);
    let ((out, held), peak) = peak_during(|| {
        rt.block_on(async {
            let mut r = FrameReader::new(
                stream,
                activity,
                limits(max_message),
                Claim::new(budget.clone(), 1.0),
            );
            let mut out = Vec::new();
            // Every step consumes input, so this ends; the bound guards a bug.
            for _ in 0..10_000 {
                match r.next().await {
                    None => break,
                    Some(Incoming::Text(b)) => out.push(Ok(Msg::Text(b.to_vec()))),
                    Some(Incoming::Binary(b)) => out.push(Ok(Msg::Binary(b.to_vec()))),
                    Some(Incoming::Spooled(s)) => out.push(Ok(Msg::Binary(s.bytes.to_vec()))),
                    Some(Incoming::Ping(b)) => out.push(Ok(Msg::Ping(b.to_vec()))),
                    Some(Incoming::Pong) => out.push(Ok(Msg::Pong)),
                    Some(Incoming::Close) => out.push(Ok(Msg::Close)),
                    Some(Incoming::Refused(code, _)) | Some(Incoming::BinaryRefused(code, _)) => {
                        out.push(Err(code.to_string()))
                    }
                }
            }
            (out, budget.in_use())
        })
    });
    assert_eq!(held, 0, "every message dropped gives its budget back");
    (out, peak)
}

/// What tungstenite's server-side reader makes of the same bytes.
fn read_tungstenite(wire: &[u8]) -> Vec<Msg> {
    struct Io {
        r: Cursor<Vec<u8>>,
    }
    impl Read for Io {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.r.read(b)
        }
    }
    impl Write for Io {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let cfg = tungstenite::protocol::WebSocketConfig {
        max_message_size: None,
        max_frame_size: None,
        ..Default::default()
    };
    let mut ws = tungstenite::WebSocket::from_raw_socket(
        Io {
            r: Cursor::new(wire.to_vec()),
        },
        tungstenite::protocol::Role::Server,
        Some(cfg),
    );
    let mut out = Vec::new();
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => out.push(Msg::Text(t.into_bytes())),
            Ok(tungstenite::Message::Binary(b)) => out.push(Msg::Binary(b)),
            Ok(tungstenite::Message::Ping(p)) => out.push(Msg::Ping(p)),
            Ok(tungstenite::Message::Pong(_)) => out.push(Msg::Pong),
            Ok(tungstenite::Message::Close(_)) => {
                out.push(Msg::Close);
                break;
            }
            Ok(tungstenite::Message::Frame(_)) => {}
            Err(_) => break,
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Valid streams, split anywhere: the same messages as tungstenite.
    #[test]
    fn agrees_with_tungstenite_on_valid_streams(
        msgs in prop::collection::vec(sent(), 0..12),
        close in any::<bool>(),
        chunks in prop::collection::vec(1usize..20_000, 1..8),
    ) {
        let mut msgs = msgs;
        if close {
            msgs.push(Sent { msg: Msg::Close, cuts: vec![], masks: vec![[1, 2, 3, 4]; 5] });
        }
        let wire: Vec<u8> = msgs.iter().flat_map(encode).collect();
        let (ours, peak) = read_kernal(&wire, &chunks, 1 << 20);
        let ours: Vec<Msg> = ours.into_iter().map(|m| m.expect("valid frames are read")).collect();
        let theirs = read_tungstenite(&wire);
        prop_assert_eq!(&ours, &theirs);
        let expected: Vec<Msg> = msgs.iter().map(|s| s.msg.clone()).collect();
        prop_assert_eq!(ours, expected);
        // The stream's own chunks plus one message at a time (and its
        // doubling growth), never the whole stream.
        let largest = msgs.iter().map(|s| match &s.msg {
            Msg::Text(b) | Msg::Binary(b) | Msg::Ping(b) => b.len(),
            _ => 0,
        }).max().unwrap_or(0) as i64;
        prop_assert!(peak <= 3 * largest + (2 * wire.len() as i64) + (1 << 20),
            "peak {} for a largest message of {} in {} bytes", peak, largest, wire.len());
    }

    /// Mutated streams: no panic, an end, and memory within the limit
    /// whatever the (corrupted) length fields claim.
    #[test]
    fn survives_mutated_streams_within_its_limits(
        msgs in prop::collection::vec(sent(), 1..8),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..12),
        inserts in prop::collection::vec((any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)), 0..3),
        cut in any::<Option<usize>>(),
        chunks in prop::collection::vec(1usize..9000, 1..6),
    ) {
        let mut wire: Vec<u8> = msgs.iter().flat_map(encode).collect();
        for (at, bytes) in inserts {
            let at = at % (wire.len() + 1);
            wire.splice(at..at, bytes);
        }
        for (at, x) in flips {
            if !wire.is_empty() {
                let i = at % wire.len();
                wire[i] ^= x;
            }
        }
        if let Some(c) = cut {
            wire.truncate(c % (wire.len() + 1));
        }
        let max_message = 256 * 1024;
        let (_, peak) = read_kernal(&wire, &chunks, max_message);
        prop_assert!(peak <= 3 * max_message as i64 + 2 * wire.len() as i64 + (1 << 20),
            "peak {} bytes from a {}-byte stream", peak, wire.len());
    }
}

/// A frame that announces more than the limit is refused on its header:
/// nothing of it is allocated.
#[test]
fn a_huge_announced_frame_allocates_nothing() {
    let mut wire = frame_header(0x2, 1 << 40, Some([1, 2, 3, 4]));
    wire.extend_from_slice(&[0u8; 64]);
    let (out, peak) = read_kernal(&wire, &[7], 1 << 20);
    assert_eq!(out, vec![Err("message_too_large".to_string())]);
    assert!(peak < 1 << 20, "{peak}");
}
