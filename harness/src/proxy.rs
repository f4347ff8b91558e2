//! A migration-channel proxy the harness can cut: it listens on a unix
//! socket, connects each accepted connection to the real destination
//! (`unix:PATH` or `tcp:HOST:PORT`) and copies bytes both ways, until
//! [`CutProxy::cut`] shuts every socket down in both directions. Both
//! VMMs then see their channel fail at once, as on a network cut; no root
//! and nothing VMM-specific is needed.

use anyhow::{bail, Context, Result};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One end of a proxied connection.
enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    fn connect(uri: &str) -> io::Result<Sock> {
        if let Some(p) = uri.strip_prefix("unix:") {
            return UnixStream::connect(p).map(Sock::Unix);
        }
        if let Some(a) = uri.strip_prefix("tcp:") {
            return TcpStream::connect(a).map(Sock::Tcp);
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the proxy cannot connect to '{uri}'"),
        ))
    }

    fn try_clone(&self) -> io::Result<Sock> {
        Ok(match self {
            Sock::Unix(s) => Sock::Unix(s.try_clone()?),
            Sock::Tcp(s) => Sock::Tcp(s.try_clone()?),
        })
    }

    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Sock::Unix(s) => s.shutdown(how),
            Sock::Tcp(s) => s.shutdown(how),
        };
    }
}

impl Read for Sock {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(b),
            Sock::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.write(b),
            Sock::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct State {
    /// Every socket of every proxied connection (handles for the cut).
    socks: Mutex<Vec<Sock>>,
    cut: AtomicBool,
}

/// A proxy between a migration source and its destination.
pub struct CutProxy {
    path: PathBuf,
    state: Arc<State>,
}

impl CutProxy {
    /// Listens on the unix socket `path` and forwards to `target`.
    pub fn start(path: &Path, target: &str) -> Result<CutProxy> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .with_context(|| format!("proxy: cannot listen on {}", path.display()))?;
        let state = Arc::new(State::default());
        let (st, target) = (state.clone(), target.to_string());
        std::thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(listener, &target, &st))
            .context("proxy: cannot start its thread")?;
        Ok(CutProxy {
            path: path.to_path_buf(),
            state,
        })
    }

    /// The URI a source connects to.
    pub fn uri(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    /// Connections proxied so far (each counts both its sockets).
    pub fn connections(&self) -> usize {
        lock(&self.state.socks).len() / 2
    }

    /// Cuts every connection: both sockets shut down in both directions;
    /// later connections are refused. Fails when nothing was proxied yet.
    pub fn cut(&self) -> Result<()> {
        self.state.cut.store(true, Ordering::SeqCst);
        let socks = lock(&self.state.socks);
        if socks.is_empty() {
            bail!("proxy: nothing to cut, no connection was proxied");
        }
        for s in socks.iter() {
            s.shutdown(Shutdown::Both);
        }
        Ok(())
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        let _ = self.cut();
        // Wakes the accept loop, which then sees the cut and ends.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept_loop(listener: UnixListener, target: &str, st: &Arc<State>) {
    for conn in listener.incoming() {
        if st.cut.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        let client = Sock::Unix(client);
        let Ok(server) = Sock::connect(target) else {
            client.shutdown(Shutdown::Both);
            continue;
        };
        if spawn_pumps(client, server, st).is_err() {
            return;
        }
    }
}

/// Two threads, one per direction; each half-closes its output at EOF.
fn spawn_pumps(client: Sock, server: Sock, st: &Arc<State>) -> io::Result<()> {
    {
        let mut socks = lock(&st.socks);
        socks.push(client.try_clone()?);
        socks.push(server.try_clone()?);
    }
    let pairs = [(client.try_clone()?, server.try_clone()?), (server, client)];
    for (mut from, mut to) in pairs {
        std::thread::Builder::new()
            .name("proxy-pump".into())
            .spawn(move || {
                let _ = io::copy(&mut from, &mut to);
                to.shutdown(Shutdown::Write);
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_both_ways_until_cut() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.sock");
        let server = UnixListener::bind(&target).unwrap();
        let proxy = CutProxy::start(
            &dir.path().join("proxy.sock"),
            &format!("unix:{}", target.display()),
        )
        .unwrap();
        assert!(proxy.cut().is_err(), "nothing to cut yet");
        let proxy = CutProxy::start(
            &dir.path().join("proxy2.sock"),
            &format!("unix:{}", target.display()),
        )
        .unwrap();
        let mut c = UnixStream::connect(proxy.uri().trim_start_matches("unix:")).unwrap();
        let (mut s, _) = server.accept().unwrap();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        s.write_all(b"pong").unwrap();
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"pong");
        assert_eq!(proxy.connections(), 1);
        proxy.cut().unwrap();
        assert_eq!(c.read(&mut b).unwrap_or(0), 0, "the source side sees EOF");
        assert_eq!(
            s.read(&mut b).unwrap_or(0),
            0,
            "the destination side sees EOF"
        );
    }
}
