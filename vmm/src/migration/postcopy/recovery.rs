//! Postcopy recovery: the resume handshake on a new connection
//! (`docs/migration-stream.md`, "Postcopy recovery").
//!
//! After a cut, both sides are `postcopy-paused`. `migrate-recover URI` on
//! the destination listens on `URI`; `migrate {uri, resume: true}` on the
//! source connects there and sends the 24-byte resume hello. The
//! destination answers on the return path with RECV_BITMAP, the pages it
//! still misses (QEMU's received bitmap, inverted); the source takes that as
//! its set of pages to send, so a page lost in flight with the old
//! connection is sent again. Then the postcopy stream goes on: pages and
//! END on the new connection, requests on its return path.

use super::super::stream::os_error_text;
use super::super::transport::{Conn, MigrationUri};
use super::super::{lock, PAGE_SIZE};
use std::io::{self, Read};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// First bytes of a resumed postcopy connection.
pub const RESUME_MAGIC: [u8; 8] = *b"MIGTRSUM";
/// Version of the resume handshake.
pub const RESUME_VERSION: u32 = 1;
/// Length of the resume hello.
pub const RESUME_HELLO_LEN: usize = 24;
/// Return-path message: the destination's bitmap of missing pages.
pub const RP_RECV_BITMAP: u8 = 0x02;
/// How long either side waits for the other's half of the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The resume hello: magic, version, reserved 0, RAM size (big-endian).
pub fn encode_hello(ram_size: u64) -> [u8; RESUME_HELLO_LEN] {
    let mut b = [0u8; RESUME_HELLO_LEN];
    b[..8].copy_from_slice(&RESUME_MAGIC);
    b[8..12].copy_from_slice(&RESUME_VERSION.to_be_bytes());
    b[16..24].copy_from_slice(&ram_size.to_be_bytes());
    b
}

/// Reads and checks the resume hello against the destination's RAM size.
pub fn read_hello<R: Read>(r: &mut R, ram_size: u64) -> Result<(), String> {
    let mut b = [0u8; RESUME_HELLO_LEN];
    r.read_exact(&mut b)
        .map_err(|e| format!("resume: no complete hello: {}", io_text(&e)))?;
    if b[..8] != RESUME_MAGIC {
        return Err(format!(
            "resume: bad hello magic {:?} (expected \"MIGTRSUM\")",
            String::from_utf8_lossy(&b[..8])
        ));
    }
    let version = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
    if version != RESUME_VERSION {
        return Err(format!("resume: unsupported hello version {version}"));
    }
    if b[12..16] != [0; 4] {
        return Err("resume: reserved hello field is not zero".into());
    }
    let size = u64::from_be_bytes(b[16..24].try_into().unwrap_or_default());
    if size != ram_size {
        return Err(format!(
            "resume: RAM size {size} does not match the paused migration's {ram_size}"
        ));
    }
    Ok(())
}

/// RECV_BITMAP: the tag, then the missing-page bitmap (u64 words, big-endian).
pub fn encode_bitmap(missing: &[u64]) -> Vec<u8> {
    let mut b = Vec::with_capacity(1 + missing.len() * 8);
    b.push(RP_RECV_BITMAP);
    for w in missing {
        b.extend_from_slice(&w.to_be_bytes());
    }
    b
}

/// Reads RECV_BITMAP for a RAM of `pages` pages. The size follows from
/// the RAM size (no length field); bits beyond the last page, and pages
/// that were not part of postcopy (`postcopy_set`), are refused.
pub fn read_bitmap<R: Read>(
    r: &mut R,
    pages: u64,
    postcopy_set: &[u64],
) -> Result<Vec<u64>, String> {
    let mut t = [0u8; 1];
    r.read_exact(&mut t).map_err(|e| {
        format!(
            "resume: no page bitmap from the destination: {}",
            io_text(&e)
        )
    })?;
    if t[0] != RP_RECV_BITMAP {
        return Err(format!(
            "resume: unexpected return-path message type {:#04x} (expected the page bitmap)",
            t[0]
        ));
    }
    let words = pages.div_ceil(64) as usize;
    let mut raw = vec![0u8; words * 8];
    r.read_exact(&mut raw)
        .map_err(|e| format!("resume: page bitmap cut short: {}", io_text(&e)))?;
    let bitmap: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
        .collect();
    let tail = pages % 64;
    if tail != 0 && bitmap.last().is_some_and(|w| w >> tail != 0) {
        return Err(format!(
            "resume: page bitmap has bits beyond the last page ({pages} pages)"
        ));
    }
    for (w, (&bits, &allowed)) in bitmap.iter().zip(postcopy_set).enumerate() {
        let extra = bits & !allowed;
        if extra != 0 {
            let page = w as u64 * 64 + u64::from(extra.trailing_zeros());
            return Err(format!(
                "resume: the destination misses page {page}, which was not part of postcopy"
            ));
        }
    }
    Ok(bitmap)
}

/// Bytes of the RECV_BITMAP message for `ram_size` bytes of RAM.
pub fn bitmap_message_len(ram_size: u64) -> u64 {
    1 + (ram_size / PAGE_SIZE as u64).div_ceil(64) * 8
}

fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "connection closed".into(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("no reply within {} s", HANDSHAKE_TIMEOUT.as_secs())
        }
        _ => os_error_text(e),
    }
}

/// A `migrate {resume: true}` waiting for the paused source thread.
pub(crate) type ResumeRequest = (MigrationUri, Option<Conn>);

/// Where `migrate {resume: true}` hands the new channel to the source's
/// migration thread, which waits in `postcopy-paused` (QEMU's
/// `postcopy_pause_sem`).
#[derive(Default)]
pub(crate) struct ResumeSlot {
    st: Mutex<Option<ResumeRequest>>,
    cv: Condvar,
}

impl ResumeSlot {
    /// `migrate {resume: true}`.
    pub fn post(&self, req: ResumeRequest) {
        *lock(&self.st) = Some(req);
        self.cv.notify_all();
    }

    /// Wakes the waiting thread (cancel) without a request.
    pub fn wake(&self) {
        let _g = lock(&self.st);
        self.cv.notify_all();
    }

    /// Waits up to `timeout` for a resume request.
    pub fn wait(&self, timeout: Duration) -> Option<ResumeRequest> {
        let mut st = lock(&self.st);
        if st.is_none() {
            st = self
                .cv
                .wait_timeout(st, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_bad_hellos_are_named() {
        let h = encode_hello(1 << 20);
        assert_eq!(read_hello(&mut &h[..], 1 << 20), Ok(()));
        assert_eq!(
            read_hello(&mut &h[..], 2 << 20),
            Err("resume: RAM size 1048576 does not match the paused migration's 2097152".into())
        );
        let mut bad = h;
        bad[0] = b'X';
        assert!(read_hello(&mut &bad[..], 1 << 20)
            .unwrap_err()
            .starts_with("resume: bad hello magic"));
        let mut bad = h;
        bad[11] = 2;
        assert_eq!(
            read_hello(&mut &bad[..], 1 << 20),
            Err("resume: unsupported hello version 2".into())
        );
        assert_eq!(
            read_hello(&mut &h[..10], 1 << 20),
            Err("resume: no complete hello: connection closed".into())
        );
    }

    #[test]
    fn bitmap_round_trips_and_is_checked_against_the_postcopy_set() {
        let set = [u64::MAX, 0b1111];
        let msg = encode_bitmap(&[0b101, 0b10]);
        assert_eq!(msg.len() as u64, bitmap_message_len(68 * 4096));
        assert_eq!(read_bitmap(&mut &msg[..], 68, &set), Ok(vec![0b101, 0b10]));
        let msg = encode_bitmap(&[0, 0b10000]);
        assert_eq!(
            read_bitmap(&mut &msg[..], 68, &[u64::MAX, u64::MAX]),
            Err("resume: page bitmap has bits beyond the last page (68 pages)".into())
        );
        let msg = encode_bitmap(&[0, 0b100]);
        assert_eq!(
            read_bitmap(&mut &msg[..], 68, &[0, 0b11]),
            Err("resume: the destination misses page 66, which was not part of postcopy".into())
        );
        assert!(read_bitmap(&mut &[0x01u8][..], 68, &set)
            .unwrap_err()
            .contains("unexpected return-path message type 0x01"));
        assert_eq!(
            read_bitmap(&mut &msg[..5], 68, &set),
            Err("resume: page bitmap cut short: connection closed".into())
        );
    }
}
