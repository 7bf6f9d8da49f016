//! Payloads read from file mappings, and how the hub scans them without
//! holding them resident.
//!
//! A 400 MB update spooled to its file as it arrives (`hub::ws::spool`) is
//! handed on as `Bytes` over a read-only mapping of that file, so every
//! check and fold reads it in place like any other payload. Pages of a
//! mapping touched by a scan count in the hub's RSS until unmapped, so the
//! scans of such a payload go a window at a time ([`window_for`]) and give
//! each window's pages back once used ([`release`]): the data stays in the
//! page cache, where a later read finds it again.

use std::sync::Mutex;

use bytes::Bytes;

pub use kernal_core::protocol::tensors::Window;

/// Bytes of a mapped payload scanned at a time.
pub const WINDOW: usize = 8 << 20;

/// Address ranges of the live mappings: only their pages may be given back
/// (`MADV_DONTNEED` on heap memory would zero it).
static MAPPED: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

fn range_of(bytes: &[u8]) -> (usize, usize) {
    let start = bytes.as_ptr() as usize;
    (start, start + bytes.len())
}

/// Whether `bytes` lie inside a live mapping.
pub fn is_mapped(bytes: &[u8]) -> bool {
    let (s, e) = range_of(bytes);
    MAPPED
        .lock()
        .map(|m| m.iter().any(|&(a, b)| a <= s && e <= b))
        .unwrap_or(false)
}

/// Gives back the pages lying wholly inside `bytes` if they belong to a
/// live mapping (nothing otherwise): the next read faults them in again
/// from the page cache.
pub fn release(bytes: &[u8]) {
    if bytes.is_empty() || !is_mapped(bytes) {
        return;
    }
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => 4096,
    };
    let (s, e) = range_of(bytes);
    let (start, end) = (s.next_multiple_of(page), e / page * page);
    if end > start {
        // SAFETY: [start, end) is page-aligned and inside a live read-only
        // shared mapping of a file (checked above, and the mapping is only
        // unmapped after it leaves `MAPPED`). Dropping its pages does not
        // change what the memory reads: they fault in again from the file.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// How to scan `bytes`: a window at a time, released, if they are mapped;
/// each tensor whole otherwise (the scan of a heap payload is unchanged).
pub fn window_for<'a>(bytes: &[u8], done: &'a mut dyn FnMut(&[u8])) -> Window<'a> {
    if is_mapped(bytes) {
        Window {
            bytes: WINDOW,
            done: Some(done),
        }
    } else {
        Window {
            bytes: usize::MAX,
            done: None,
        }
    }
}

/// A read-only mapping of a whole file, registered while it lives, with
/// whatever else must live as long as its bytes (budget permits, the file's
/// removal when nobody kept it).
pub struct Mapping<T: Send + 'static> {
    map: memmap2::Mmap,
    _with: T,
}

impl<T: Send + 'static> Mapping<T> {
    /// Maps `file` (opened for reading) as `Bytes`.
    pub fn bytes(file: &std::fs::File, with: T) -> std::io::Result<Bytes> {
        // SAFETY: the hub only maps files it wrote itself and never writes
        // again while a mapping lives (spooled payloads are written in full
        // before they are mapped, and blob files are only written over as
        // spares, after the rows naming them are gone).
        let map = unsafe { memmap2::Mmap::map(file)? };
        let _ = map.advise(memmap2::Advice::Sequential);
        if let Ok(mut m) = MAPPED.lock() {
            m.push(range_of(&map));
        }
        Ok(Bytes::from_owner(Mapping { map, _with: with }))
    }
}

impl<T: Send + 'static> AsRef<[u8]> for Mapping<T> {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl<T: Send + 'static> Drop for Mapping<T> {
    fn drop(&mut self) {
        let r = range_of(&self.map);
        if let Ok(mut m) = MAPPED.lock() {
            if let Some(i) = m.iter().position(|&x| x == r) {
                m.swap_remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_mapped_payload_reads_the_same_after_its_pages_are_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let data: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let b = Mapping::bytes(&f, ()).unwrap();
        assert!(is_mapped(&b[10..20]));
        assert!(!is_mapped(&data));
        let mut done = release;
        let w = window_for(&b, &mut done);
        assert_eq!(w.bytes, WINDOW);
        release(&b);
        assert_eq!(&b[..], &data[..]);
        // Heap memory is never given back.
        let mut heap = data.clone();
        release(&heap);
        assert_eq!(heap, data);
        heap.clear();
        let range = range_of(&b);
        drop(b);
        assert!(!MAPPED.lock().unwrap().contains(&range));
    }
}
