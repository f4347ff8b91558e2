//! Page data handed to a unix socket by reference: `vmsplice(2)` into a
//! pipe, `splice(2)` from the pipe into the socket.
//!
//! A `writev` of guest pages copies them into the socket's buffers and the
//! destination copies them out again; spliced, the socket's buffers refer to
//! the guest's own pages and the destination's read is the only copy.
//! Until the destination has read a page it sees the page as it is then,
//! not as it was when it was spliced: a vCPU writing it meanwhile makes the
//! source send it again (the dirty log), as for a page a vCPU writes while
//! `writev` copies it. The source reports `completed` only once the
//! destination has read the whole stream and closed the channel, so no
//! page changes under a read after that (`docs/performance.md`, eleventh
//! round). Unix sockets only: a TCP peer acknowledges data before it reads
//! it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::direct::{advance_iovecs, moved};
use super::PAGE_SIZE;

/// Pipe size asked for: 256 pages (the unprivileged limit of
/// `/proc/sys/fs/pipe-max-size` by default).
const PIPE_BYTES: usize = 1 << 20;

/// A pipe that carries page references from guest RAM to a socket.
pub(crate) struct Splicer {
    read: OwnedFd,
    write: OwnedFd,
}

impl Splicer {
    /// A pipe of up to [`PIPE_BYTES`].
    pub(crate) fn new() -> io::Result<Splicer> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 stores.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both descriptors are open and ours.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; a refusal keeps the default size.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_BYTES as libc::c_int,
            )
        };
        Ok(Splicer { read, write })
    }

    /// Moves `pages` (4096 bytes each, in order) into `sock`: each
    /// `vmsplice` takes what fits in the empty pipe (it never blocks), and
    /// the pipe is emptied into the socket before the next. Nothing stays
    /// in the pipe on success.
    ///
    /// # Safety
    /// Each pointer is the start of 4096 bytes of the process's memory that
    /// stay mapped while the peer may read them (guest RAM, which lives as
    /// long as the VMM).
    pub(crate) unsafe fn send(&self, sock: RawFd, pages: &[*const u8]) -> io::Result<()> {
        let mut all = runs(pages);
        let mut iov = &mut all[..];
        while !iov.is_empty() {
            // SAFETY: `iov` holds regions of the caller's pages.
            let r = unsafe {
                libc::vmsplice(
                    self.write.as_raw_fd(),
                    iov.as_ptr(),
                    iov.len().min(1024),
                    libc::SPLICE_F_NONBLOCK,
                )
            };
            // An error, even EAGAIN, ends it: the pipe is empty here.
            let Some(n) = moved(r)? else { continue };
            iov = advance_iovecs(iov, n);
            self.drain(sock, n)?;
        }
        Ok(())
    }

    /// `splice`s `bytes` from the pipe into `sock`.
    fn drain(&self, sock: RawFd, mut bytes: usize) -> io::Result<()> {
        while bytes > 0 {
            // SAFETY: plain descriptors; no user memory is passed.
            let r = unsafe {
                libc::splice(
                    self.read.as_raw_fd(),
                    std::ptr::null_mut(),
                    sock,
                    std::ptr::null_mut(),
                    bytes,
                    libc::SPLICE_F_MOVE,
                )
            };
            if let Some(n) = moved(r)? {
                bytes -= n;
            }
        }
        Ok(())
    }
}

/// `pages` as regions, neighbouring pages merged.
fn runs(pages: &[*const u8]) -> Vec<libc::iovec> {
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(pages.len());
    for &p in pages {
        match iov.last_mut() {
            Some(last) if (last.iov_base as usize) + last.iov_len == p as usize => {
                last.iov_len += PAGE_SIZE;
            }
            _ => iov.push(libc::iovec {
                iov_base: p.cast_mut().cast(),
                iov_len: PAGE_SIZE,
            }),
        }
    }
    iov
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn neighbouring_pages_merge() {
        let buf = vec![0u8; 8 * PAGE_SIZE];
        let at = |i: usize| buf[i * PAGE_SIZE..].as_ptr();
        let iov = runs(&[at(0), at(1), at(2), at(5), at(6), at(3)]);
        let lens: Vec<usize> = iov.iter().map(|v| v.iov_len / PAGE_SIZE).collect();
        assert_eq!(lens, [3, 2, 1]);
        assert_eq!(iov[1].iov_base as usize, at(5) as usize);
    }

    #[test]
    fn pages_arrive_in_order_over_many_pipefuls() {
        let pages = 700;
        let mut src = vec![0u8; pages * PAGE_SIZE];
        for (i, b) in src.iter_mut().enumerate() {
            *b = (i / PAGE_SIZE * 7 + i % 251) as u8;
        }
        // Out of order, with gaps and runs.
        let order: Vec<usize> = (0..pages).rev().step_by(3).chain(0..200).collect();
        let ptrs: Vec<*const u8> = order
            .iter()
            .map(|&i| src[i * PAGE_SIZE..].as_ptr())
            .collect();
        let (tx, mut rx) = UnixStream::pair().unwrap();
        let want: Vec<u8> = order
            .iter()
            .flat_map(|&i| src[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].iter().copied())
            .collect();
        let len = want.len();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; len];
            rx.read_exact(&mut got).unwrap();
            got
        });
        let s = Splicer::new().unwrap();
        // SAFETY: `src` outlives the reader, which has read everything once joined.
        unsafe { s.send(tx.as_raw_fd(), &ptrs) }.unwrap();
        let got = reader.join().unwrap();
        assert!(got == want, "spliced bytes differ");
        drop(src);
    }

    #[test]
    fn a_closed_peer_is_an_error() {
        let page = vec![1u8; PAGE_SIZE];
        let (tx, rx) = UnixStream::pair().unwrap();
        drop(rx);
        let s = Splicer::new().unwrap();
        // SAFETY: the page outlives the call; nobody reads it afterwards.
        let r = unsafe { s.send(tx.as_raw_fd(), &[page.as_ptr()]) };
        assert!(r.is_err());
    }
}
