//! The socket under a trainer's connection, kept so that its outbox can end
//! a connection whose client does not read.

/// The socket of a connection, as `on_connect` saw it: for ending a
/// connection whose client does not read (see [`PeerSocket`]).
#[derive(Clone, Copy)]
pub struct ConnFd(std::os::fd::RawFd);

/// Stores the connection's socket in its request extensions (the server's
/// `on_connect` hook), plain or TLS.
pub fn remember_socket(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    use std::os::fd::AsRawFd;
    type Plain = actix_web::rt::net::TcpStream;
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<Plain>;
    if let Some(s) = conn.downcast_ref::<Plain>() {
        ext.insert(ConnFd(s.as_raw_fd()));
    } else if let Some(s) = conn.downcast_ref::<Tls>() {
        ext.insert(ConnFd(s.get_ref().0.as_raw_fd()));
    }
}

/// A connection's socket as its outbox may end it. The HTTP dispatcher
/// stops pulling a response body while it cannot write, so a client that
/// never reads would otherwise hold its connection for ever; shutting the
/// socket down makes the dispatcher's next write fail and drop the
/// connection (linger 0: reset). Not a duplicate descriptor: at 10,000
/// trainers duplicates doubled the hub's descriptors past a 20,000 limit.
/// The socket's inode, recorded while the request (so the connection) was
/// alive, is checked before ending it, so a descriptor number reused by a
/// later connection is left alone.
pub struct PeerSocket {
    fd: std::os::fd::RawFd,
    id: (u64, u64),
}

/// (device, inode) of an open descriptor.
fn identity(fd: std::os::fd::RawFd) -> Option<(u64, u64)> {
    // SAFETY: fstat only writes the struct it is given.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev as u64, st.st_ino as u64))
}

impl PeerSocket {
    /// Records the socket of the request being handled.
    pub fn of(fd: ConnFd) -> Option<PeerSocket> {
        identity(fd.0).map(|id| PeerSocket { fd: fd.0, id })
    }

    pub(super) fn abort(&self) {
        if identity(self.fd) != Some(self.id) {
            return;
        }
        let fd = self.fd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: plain socket calls on the connection's descriptor, checked
        // above to be the same socket.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
}
