//! Migration transports: `unix:PATH` and `tcp:HOST:PORT` URIs, listening
//! (destination) and connecting (source); `file:` and `fd:` channels are
//! opened by [`super::channel`].

use super::stream::os_error_text;
use migtest_qmp::schema::SocketAddress;
use migtest_qmp::ErrorBody;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};

/// A parsed migration URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationUri {
    /// `unix:PATH`.
    Unix(String),
    /// `tcp:HOST:PORT` (host may be empty).
    Tcp {
        /// Host name or address (brackets removed), possibly empty.
        host: String,
        /// Port (0 = any, for listening).
        port: u16,
    },
    /// `file:PATH[,offset=N]`.
    File {
        /// File name.
        path: String,
        /// Where the stream starts in the file.
        offset: u64,
    },
    /// `fd:NAME`: a `getfd` name, or an inherited descriptor number.
    Fd(String),
}

impl MigrationUri {
    /// Parses a URI with QEMU's error texts.
    pub fn parse(uri: &str) -> Result<MigrationUri, ErrorBody> {
        if let Some(path) = uri.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ErrorBody::generic(format!("error parsing address '{uri}'")));
            }
            return Ok(MigrationUri::Unix(path.to_string()));
        }
        if let Some(rest) = uri.strip_prefix("tcp:") {
            let bad = || ErrorBody::generic(format!("error parsing address '{rest}'"));
            let (host, port) = if let Some(r) = rest.strip_prefix('[') {
                let (h, p) = r.split_once("]:").ok_or_else(bad)?;
                (h, p)
            } else {
                rest.rsplit_once(':').ok_or_else(bad)?
            };
            let port = port.split(',').next().unwrap_or("");
            let port: u16 = port.parse().map_err(|_| bad())?;
            return Ok(MigrationUri::Tcp {
                host: host.to_string(),
                port,
            });
        }
        if let Some(spec) = uri.strip_prefix("file:") {
            return super::channel::parse_file(spec);
        }
        if let Some(name) = uri.strip_prefix("fd:") {
            return Ok(MigrationUri::Fd(name.to_string()));
        }
        Err(ErrorBody::generic(UNKNOWN_PROTOCOL))
    }
}

/// The error of [`MigrationUri::parse`] for a URI of no known protocol; any
/// other error is an address error, which QEMU keeps as `error-desc`.
pub const UNKNOWN_PROTOCOL: &str = "Parameter 'uri' expects a valid migration protocol";

/// A connected migration channel.
#[derive(Debug)]
pub enum Conn {
    /// Unix socket.
    Unix(UnixStream),
    /// TCP socket.
    Tcp(TcpStream),
    /// A `file:` channel.
    File(std::fs::File),
}

impl Conn {
    /// Another handle on the same socket (for shutdown from another thread).
    pub fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::File(f) => Conn::File(f.try_clone()?),
        })
    }

    /// Shuts the socket down in both directions, failing blocked I/O.
    pub fn shutdown(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(Shutdown::Both),
            Conn::Tcp(s) => s.shutdown(Shutdown::Both),
            Conn::File(_) => Ok(()),
        };
    }

    /// After our write half is shut: waits up to `timeout` for the peer to
    /// close its side (EOF or an error). Returns whether it did in time.
    pub fn wait_peer_close(&mut self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 64];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let set = match self {
                Conn::Unix(s) => s.set_read_timeout(Some(left)),
                Conn::Tcp(s) => s.set_read_timeout(Some(left)),
                // Nobody reads a file while it is written.
                Conn::File(_) => return true,
            };
            if set.is_err() {
                return false;
            }
            match self.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    /// Sets (or clears) the read timeout.
    pub fn set_read_timeout(&self, t: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(t),
            Conn::Tcp(s) => s.set_read_timeout(t),
            // A file never blocks for long.
            Conn::File(_) => Ok(()),
        }
    }

    /// Bytes written that the peer has not read yet (`SIOCOUTQ`; on TCP,
    /// not yet acknowledged); `None` for a file or when the kernel does not
    /// say.
    pub fn unread(&self) -> Option<usize> {
        use std::os::fd::AsRawFd;
        let fd = match self {
            Conn::Unix(s) => s.as_raw_fd(),
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::File(_) => return None,
        };
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) stores one int through the pointer.
        let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
        (r == 0).then(|| usize::try_from(n).ok()).flatten()
    }

    /// Shuts down the write half (the destination then sees EOF).
    pub fn shutdown_write(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
            Conn::File(_) => Ok(()),
        };
    }
}

impl std::os::fd::AsRawFd for Conn {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Conn::Unix(s) => s.as_raw_fd(),
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::File(f) => f.as_raw_fd(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
            Conn::File(f) => f.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
            Conn::File(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening socket for an incoming migration.
#[derive(Debug)]
pub enum Listener {
    /// Unix socket.
    Unix(UnixListener, String),
    /// TCP socket.
    Tcp(TcpListener),
    /// A `file:` or `fd:` channel, open already: "accepting" hands it out.
    Ready(std::sync::Mutex<Option<Conn>>),
}

fn resolve(host: &str, port: u16, listen: bool) -> io::Result<Vec<SocketAddr>> {
    let host = match host {
        // Loopback unless the URI names an address.
        "" => return Ok(vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)]),
        // QEMU accepts "0" for "any address".
        "0" if listen => {
            return Ok(vec![SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port,
            )])
        }
        h => h,
    };
    Ok((host, port).to_socket_addrs()?.collect())
}

impl Listener {
    /// Binds the address of `uri` (QEMU unlinks a stale unix socket first).
    pub fn bind(uri: &MigrationUri) -> Result<Listener, String> {
        if let Some(conn) = super::channel::open_now(uri, false)? {
            return Ok(Listener::Ready(std::sync::Mutex::new(Some(conn))));
        }
        match uri {
            MigrationUri::Unix(path) => {
                let _ = std::fs::remove_file(path);
                UnixListener::bind(path)
                    .map(|l| Listener::Unix(l, path.clone()))
                    .map_err(|e| format!("Failed to bind socket to {path}: {}", os_error_text(&e)))
            }
            MigrationUri::Tcp { host, port } => {
                on_first_addr(host, *port, true, TcpListener::bind, |e| {
                    format!("Failed to bind socket: {}", os_error_text(e))
                })
                .map(Listener::Tcp)
            }
            MigrationUri::File { .. } | MigrationUri::Fd(_) => {
                Err("the channel was opened already".into())
            }
        }
    }

    /// The bound address as `query-migrate` reports it (real TCP port).
    pub fn socket_address(&self) -> Option<SocketAddress> {
        match self {
            Listener::Unix(_, path) => Some(SocketAddress::Unix { path: path.clone() }),
            Listener::Tcp(l) => l.local_addr().ok().map(|a| SocketAddress::Inet {
                host: a.ip().to_string(),
                port: a.port().to_string(),
            }),
            Listener::Ready(_) => None,
        }
    }

    /// Waits up to `timeout` for a connection (`None` when none came).
    pub fn accept_timeout(&self, timeout: std::time::Duration) -> io::Result<Option<Conn>> {
        use std::os::fd::AsRawFd;
        let fd = match self {
            Listener::Unix(l, _) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
            // The one open channel, once; nothing else ever arrives.
            Listener::Ready(c) => {
                return Ok(c.lock().unwrap_or_else(|e| e.into_inner()).take());
            }
        };
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Ok(None);
            }
            return self.accept().map(Some);
        }
    }

    /// Waits for the source to connect.
    pub fn accept(&self) -> io::Result<Conn> {
        match self {
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Conn::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }),
            Listener::Ready(c) => super::lock(c).take().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotConnected, "channel already taken")
            }),
        }
    }
}

/// Connects to the destination of `uri`, with QEMU-like error texts.
/// (`file:` and `fd:` channels are opened by `migrate` itself, see
/// [`super::channel::open_now`].)
pub fn connect(uri: &MigrationUri) -> Result<Conn, String> {
    match uri {
        MigrationUri::Unix(path) => UnixStream::connect(path)
            .map(|s| {
                grow_send_buffer(&s);
                Conn::Unix(s)
            })
            .map_err(|e| format!("Failed to connect to '{path}': {}", os_error_text(&e))),
        MigrationUri::Tcp { host, port } => {
            let s = on_first_addr(host, *port, false, TcpStream::connect, |e| {
                format!("Failed to connect to '{host}:{port}': {}", os_error_text(e))
            })?;
            let _ = s.set_nodelay(true);
            Ok(Conn::Tcp(s))
        }
        MigrationUri::File { .. } | MigrationUri::Fd(_) => {
            Err("the channel was opened already".into())
        }
    }
}

/// Send buffer the source asks for on a unix migration socket (capped by
/// the host's `net.core.wmem_max`).
const SEND_BUFFER: libc::c_int = 4 << 20;

/// Asks for [`SEND_BUFFER`] bytes of socket send buffer on `s`, so the
/// source can write ahead of a destination that is busy loading; best
/// effort.
fn grow_send_buffer(s: &impl std::os::fd::AsRawFd) {
    let size = SEND_BUFFER;
    // SAFETY: a valid descriptor and a c_int option value of the given size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Tries `f` on each address `host:port` resolves to and returns the first
/// success; otherwise `failed` of the last error, or a resolution error.
fn on_first_addr<T>(
    host: &str,
    port: u16,
    listen: bool,
    mut f: impl FnMut(SocketAddr) -> io::Result<T>,
    failed: impl FnOnce(&io::Error) -> String,
) -> Result<T, String> {
    let unresolved =
        |detail: String| format!("address resolution failed for {host}:{port}{detail}");
    let addrs =
        resolve(host, port, listen).map_err(|e| unresolved(format!(": {}", os_error_text(&e))))?;
    let mut last = None;
    for a in addrs {
        match f(a) {
            Ok(t) => return Ok(t),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => failed(&e),
        None => unresolved(String::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SO_SNDBUF` of `s` as the kernel reports it (twice the usable size).
    fn send_buffer(s: &impl std::os::fd::AsRawFd) -> libc::c_int {
        let mut size: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid descriptor and an out-parameter of the given size.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&mut size as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        size
    }

    #[test]
    fn a_unix_source_asks_for_a_large_send_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let Conn::Unix(s) = connect(&MigrationUri::Unix(path.display().to_string())).unwrap()
        else {
            panic!("not a unix connection");
        };
        let cap = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .ok()
            .and_then(|t| t.trim().parse::<libc::c_int>().ok())
            .unwrap_or(SEND_BUFFER);
        let plain = UnixStream::pair().unwrap().0;
        let expected = SEND_BUFFER.min(cap) * 2;
        assert!(
            send_buffer(&s) >= expected,
            "SO_SNDBUF {} < {expected} (a fresh socket has {})",
            send_buffer(&s),
            send_buffer(&plain)
        );
    }

    #[test]
    fn parse_uris() {
        assert_eq!(
            MigrationUri::parse("unix:/tmp/x").unwrap(),
            MigrationUri::Unix("/tmp/x".into())
        );
        assert_eq!(
            MigrationUri::parse("tcp:127.0.0.1:0").unwrap(),
            MigrationUri::Tcp {
                host: "127.0.0.1".into(),
                port: 0
            }
        );
        assert_eq!(
            MigrationUri::parse("tcp:[::1]:4446").unwrap(),
            MigrationUri::Tcp {
                host: "::1".into(),
                port: 4446
            }
        );
        assert_eq!(
            MigrationUri::parse("tcp::4446").unwrap(),
            MigrationUri::Tcp {
                host: "".into(),
                port: 4446
            }
        );
        assert_eq!(
            MigrationUri::parse("exec:cat").unwrap_err().desc,
            "Parameter 'uri' expects a valid migration protocol"
        );
        assert_eq!(
            MigrationUri::parse("tcp:localhost").unwrap_err().desc,
            "error parsing address 'localhost'"
        );
        assert_eq!(
            MigrationUri::parse("tcp:h:99999").unwrap_err().desc,
            "error parsing address 'h:99999'"
        );
        assert!(MigrationUri::parse("unix:").is_err());
    }

    #[test]
    fn tcp_port_zero_reports_real_port() {
        let l = Listener::bind(&MigrationUri::parse("tcp:127.0.0.1:0").unwrap()).unwrap();
        match l.socket_address().unwrap() {
            SocketAddress::Inet { host, port } => {
                assert_eq!(host, "127.0.0.1");
                assert_ne!(port, "0");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connect_refused_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope").to_string_lossy().into_owned();
        let e = connect(&MigrationUri::Unix(p.clone())).unwrap_err();
        assert_eq!(
            e,
            format!("Failed to connect to '{p}': No such file or directory")
        );
    }
}
