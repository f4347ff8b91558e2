//! Postcopy: the return path and the page-request queue.
//!
//! After the source switched to postcopy (`migrate-start-postcopy`, see
//! `outgoing/postcopy.rs`), the destination runs the guest and asks for
//! pages it has not received over the *return path*: the other direction
//! of the same migration socket (`docs/migration-stream.md`). A request is
//! 9 bytes, `0x01` then the page index (u64, big-endian). The destination
//! closes the socket once it has received everything (END, EOF), which the
//! source reads as the end of the return path.
//!
//! Submodules: [`incoming`] (the destination's side: requests out, pages
//! in through the RAM's postcopy gate), [`recovery`] (the resume
//! handshake after a cut), `resume_dest` (the destination's recovery
//! thread) and `qmp` (`migrate-pause`, `migrate-recover`, `migrate`
//! with `resume`).

pub(crate) mod incoming;
mod qmp;
pub mod recovery;
mod resume_dest;

use super::transport::Conn;
use super::{lock, stream::os_error_text};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Condvar, Mutex};

/// Return-path message: request one page.
pub const RP_REQUEST: u8 = 0x01;
/// Length of a request message.
pub const RP_REQUEST_LEN: usize = 9;

/// Encodes a page request.
pub fn encode_request(page: u64) -> [u8; RP_REQUEST_LEN] {
    let mut b = [0u8; RP_REQUEST_LEN];
    b[0] = RP_REQUEST;
    b[1..].copy_from_slice(&page.to_be_bytes());
    b
}

/// How the return path ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpEnd {
    /// The destination closed it (it has everything, or it went away).
    Closed,
    /// Damaged or failed: the text for `error-desc`.
    Error(String),
}

#[derive(Debug, Default)]
struct QueueState {
    pages: VecDeque<u64>,
    end: Option<RpEnd>,
}

/// The source's queue of requested pages, filled by the return-path thread.
#[derive(Debug, Default)]
pub struct Requests {
    st: Mutex<QueueState>,
    cv: Condvar,
}

impl Requests {
    /// A request arrived.
    pub fn push(&self, page: u64) {
        lock(&self.st).pages.push_back(page);
        self.cv.notify_all();
    }

    /// The return path ended.
    pub fn close(&self, end: RpEnd) {
        let mut s = lock(&self.st);
        if s.end.is_none() {
            s.end = Some(end);
        }
        self.cv.notify_all();
    }

    /// The next requested page, if any (does not block).
    pub fn pop(&self) -> Option<u64> {
        lock(&self.st).pages.pop_front()
    }

    /// How the return path ended, if it did.
    pub fn end(&self) -> Option<RpEnd> {
        lock(&self.st).end.clone()
    }

    /// Waits up to `timeout` for the return path to end.
    pub fn wait_end(&self, timeout: std::time::Duration) -> Option<RpEnd> {
        let deadline = std::time::Instant::now() + timeout;
        let mut s = lock(&self.st);
        while s.end.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            s = self
                .cv
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.end.clone()
    }
}

/// Reads the return path until EOF: validates every message (known type,
/// page in range) and queues the requests; `on_request` counts them.
pub fn read_return_path<R: Read>(
    mut r: R,
    pages: u64,
    q: &Requests,
    on_request: &dyn Fn(),
) -> RpEnd {
    let mut off = 0u64;
    loop {
        let mut t = [0u8; 1];
        match read_full(&mut r, &mut t) {
            Ok(false) => return RpEnd::Closed,
            Ok(true) => {}
            Err(e) => return RpEnd::Closed.or_io(e),
        }
        if t[0] != RP_REQUEST {
            return RpEnd::Error(format!(
                "return path: unknown message type {:#04x} at offset {off}",
                t[0]
            ));
        }
        let mut b = [0u8; 8];
        match read_full(&mut r, &mut b) {
            Ok(true) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return RpEnd::Error(format!(
                    "return path: unexpected end in a page request at offset {off}"
                ))
            }
            Ok(false) => {
                return RpEnd::Error(format!(
                    "return path: unexpected end in a page request at offset {off}"
                ))
            }
            Err(e) => return RpEnd::Closed.or_io(e),
        }
        let page = u64::from_be_bytes(b);
        if page >= pages {
            return RpEnd::Error(format!(
                "return path: requested page {page} out of range (RAM has {pages} pages) at offset {off}"
            ));
        }
        q.push(page);
        on_request();
        off += RP_REQUEST_LEN as u64;
    }
}

impl RpEnd {
    /// A read error on the return path: the connection is gone.
    fn or_io(self, e: io::Error) -> RpEnd {
        RpEnd::Error(format!(
            "Detected IO failure for postcopy. Migration paused. ({})",
            os_error_text(&e)
        ))
    }
}

/// Fills `buf`; `Ok(false)` on EOF before the first byte.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) if n == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The destination's writer of page requests.
pub struct RequestWriter(Mutex<Conn>);

impl RequestWriter {
    /// Requests go out on `conn` (a handle on the migration socket).
    pub fn new(conn: Conn) -> RequestWriter {
        RequestWriter(Mutex::new(conn))
    }
}

impl crate::guest::PageRequester for RequestWriter {
    fn request(&self, page: u64) {
        // A failed write means the channel is gone; the loader sees it too.
        let _ = lock(&self.0).write_all(&encode_request(page));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_queued_and_bad_messages_named() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&encode_request(3));
        bytes.extend_from_slice(&encode_request(7));
        let q = Requests::default();
        assert_eq!(read_return_path(&bytes[..], 8, &q, &|| {}), RpEnd::Closed);
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(3), Some(7), None));
        bytes.extend_from_slice(&encode_request(8));
        assert_eq!(
            read_return_path(&bytes[..], 8, &q, &|| {}),
            RpEnd::Error(
                "return path: requested page 8 out of range (RAM has 8 pages) at offset 18".into()
            )
        );
        assert_eq!(
            read_return_path(&[0x02u8][..], 8, &q, &|| {}),
            RpEnd::Error("return path: unknown message type 0x02 at offset 0".into())
        );
        assert_eq!(
            read_return_path(&[0x01u8, 0][..], 8, &q, &|| {}),
            RpEnd::Error("return path: unexpected end in a page request at offset 0".into())
        );
    }
}
