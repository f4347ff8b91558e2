//! Reading a PAGES record's page data straight into guest RAM.
//!
//! The reader validates a record's entries before its data; with a
//! [`DirectPages`] target and an input that can read into raw memory
//! ([`FdInput`]: `readv(2)` with iovecs pointing into guest RAM), the data
//! then goes from the socket into the guest pages without a batch buffer
//! between. Those writes are the kernel's (or [`copy_bytes`]'s, for bytes
//! already buffered), never Rust references, so two multifd channels
//! writing the same page (a malformed stream) stay hardware-level writes.
//! The stream digest does not cover page data (`docs/migration-stream.md`),
//! so nothing reads the pages again after the kernel wrote them.

use crate::guest::memory::copy_bytes;
use std::io::{self, Read};
use std::os::fd::AsRawFd;

/// Guest RAM a PAGES record's data may be read into directly.
pub trait DirectPages {
    /// Where page `page` (range-checked by the reader) is: 4096 bytes
    /// valid for writes and reads for as long as the load runs, the page
    /// marked as written. `None`: read this record through the batch buffer.
    fn page_target(&self, page: u64) -> Option<*mut u8>;
}

/// What a [`StreamReader`](super::StreamReader) reads from: any
/// [`Read`], or an [`FdInput`], which can also read into raw memory.
pub trait StreamInput {
    /// As [`Read::read`].
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Reads at least one byte into the regions `iov` (filled in order),
    /// `Ok(0)` at EOF; `None` if this input cannot read into raw memory.
    ///
    /// # Safety
    /// Every region is valid for writes of its length and is not accessed
    /// through a Rust reference meanwhile.
    unsafe fn read_raw(&mut self, _iov: &[libc::iovec]) -> Option<io::Result<usize>> {
        None
    }
    /// Whether [`read_raw`](Self::read_raw) works.
    fn raw(&self) -> bool {
        false
    }
}

impl<R: Read> StreamInput for R {
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf)
    }
}

/// A buffered reader over a socket or file that reads page data straight
/// into raw memory. Its buffer is small (8 KiB) so that most of a record's
/// data is not read ahead into it but into guest RAM.
pub struct FdInput<T> {
    inner: T,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
}

/// [`FdInput`]'s buffer: larger than a PAGES record's head with a few
/// hundred entries, small against its data.
const FD_INPUT_BUFFER: usize = 8 * 1024;

impl<T: Read + AsRawFd> FdInput<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> FdInput<T> {
        FdInput {
            inner,
            buf: vec![0; FD_INPUT_BUFFER].into_boxed_slice(),
            pos: 0,
            filled: 0,
        }
    }
}

impl<T: Read + AsRawFd> StreamInput for FdInput<T> {
    fn read_some(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.filled {
            if out.len() >= self.buf.len() {
                return self.inner.read(out);
            }
            self.filled = self.inner.read(&mut self.buf)?;
            self.pos = 0;
        }
        let n = out.len().min(self.filled - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }

    unsafe fn read_raw(&mut self, iov: &[libc::iovec]) -> Option<io::Result<usize>> {
        if self.pos < self.filled {
            // Buffered bytes first, copied into the regions in order.
            let mut done = 0;
            for v in iov {
                let n = v.iov_len.min(self.filled - self.pos);
                // SAFETY: the caller's contract for the region; the source
                // is this reader's own buffer.
                unsafe { copy_bytes(v.iov_base.cast(), self.buf[self.pos..].as_ptr(), n) };
                self.pos += n;
                done += n;
                if self.pos == self.filled {
                    break;
                }
            }
            return Some(Ok(done));
        }
        let cnt = iov.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: the iovecs point to regions valid for writes (the
        // caller's contract); the kernel writes them.
        let n = unsafe { libc::readv(self.inner.as_raw_fd(), iov.as_ptr(), cnt) };
        Some(if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        })
    }

    fn raw(&self) -> bool {
        true
    }
}

/// Reads exactly the regions `iov` (advancing over partial reads);
/// `Ok(false)` at an EOF before they are full.
///
/// # Safety
/// As [`StreamInput::read_raw`].
pub(super) unsafe fn read_raw_exact<R: StreamInput>(
    r: &mut R,
    mut iov: &mut [libc::iovec],
) -> io::Result<bool> {
    while !iov.is_empty() {
        // SAFETY: the caller's contract.
        let n = match unsafe { r.read_raw(iov) } {
            None => return Err(io::Error::other("input cannot read into guest RAM")),
            Some(Ok(0)) => return Ok(false),
            Some(Ok(n)) => n,
            Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Some(Err(e)) => return Err(e),
        };
        iov = advance_iovecs(iov, n);
    }
    Ok(true)
}

/// What a write-like call's return value `r` means: `Some(n)` bytes moved,
/// `None` interrupted (call again), an error (0 bytes: `WriteZero`).
pub(super) fn moved(r: isize) -> io::Result<Option<usize>> {
    match r {
        0 => Err(io::Error::from(io::ErrorKind::WriteZero)),
        r if r > 0 => Ok(Some(r as usize)),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

/// The regions `iov` without their first `n` bytes (after a partial read
/// or write of `n`, at most their total length), empty leading regions
/// dropped.
pub(super) fn advance_iovecs(mut iov: &mut [libc::iovec], mut n: usize) -> &mut [libc::iovec] {
    while let Some(first) = iov.first_mut() {
        if n < first.iov_len {
            first.iov_base = first.iov_base.cast::<u8>().wrapping_add(n).cast();
            first.iov_len -= n;
            break;
        }
        n -= first.iov_len;
        iov = &mut iov[1..];
    }
    iov
}
