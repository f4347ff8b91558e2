//! File descriptors passed to a monitor over SCM_RIGHTS: `getfd`,
//! `closefd`, and the lookup `fd:NAME` migration URIs do (QEMU's
//! `monitor/fds.c`).
//!
//! As in QEMU the named descriptors belong to one monitor (connection).
//! Each QMP connection is served by its own thread and runs its commands
//! on that thread (see [`crate::server`]), so the table is thread-local:
//! the "current monitor" of a command is the thread it runs on. Commands
//! that do not run on a monitor thread (the `-incoming` option) see an
//! empty table, as QEMU's `monitor_cur()` is NULL there.

use migtest_qmp::args::Args;
use migtest_qmp::ErrorBody;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// At most this many descriptors are taken from one message (more are closed
/// by the kernel as `MSG_CTRUNC`).
const MAX_FDS_PER_MESSAGE: usize = 16;

#[derive(Default)]
struct MonitorFds {
    /// The descriptors of the last message read that carried any (QEMU's
    /// chardev keeps only those of the last read).
    received: Vec<OwnedFd>,
    /// `getfd` names, newest first (QEMU's list order).
    named: Vec<(String, OwnedFd)>,
    /// Whether this thread serves a monitor.
    is_monitor: bool,
}

thread_local! {
    static FDS: RefCell<MonitorFds> = RefCell::default();
}

/// Marks the current thread as the one serving a monitor connection.
pub fn enter_monitor() {
    FDS.with(|f| f.borrow_mut().is_monitor = true);
}

/// Records descriptors that came with the last read on this monitor,
/// replacing (closing) earlier ones no `getfd` took.
pub fn set_received(fds: Vec<OwnedFd>) {
    if !fds.is_empty() {
        FDS.with(|f| f.borrow_mut().received = fds);
    }
}

/// `getfd {fdname}`.
pub fn getfd(mut args: Args) -> Result<(), ErrorBody> {
    let name = args.str("fdname")?;
    args.finish()?;
    // QEMU's qemu_chr_fe_get_msgfd hands out the last descriptor received.
    let fd = FDS
        .with(|f| f.borrow_mut().received.pop())
        .ok_or_else(|| ErrorBody::generic("No file descriptor supplied via SCM_RIGHTS"))?;
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        drop(fd);
        return Err(ErrorBody::generic(
            "Parameter 'fdname' expects a name not starting with a digit",
        ));
    }
    FDS.with(|f| {
        let named = &mut f.borrow_mut().named;
        match named.iter_mut().find(|(n, _)| *n == name) {
            Some((_, old)) => *old = fd,
            None => named.insert(0, (name, fd)),
        }
    });
    Ok(())
}

/// `closefd {fdname}`.
pub fn closefd(mut args: Args) -> Result<(), ErrorBody> {
    let name = args.str("fdname")?;
    args.finish()?;
    let found = FDS.with(|f| {
        let named = &mut f.borrow_mut().named;
        let pos = named.iter().position(|(n, _)| *n == name);
        pos.map(|p| named.remove(p))
    });
    match found {
        Some(_) => Ok(()),
        None => Err(ErrorBody::generic(format!(
            "File descriptor named '{name}' not found"
        ))),
    }
}

/// QEMU's `monitor_get_fd`: takes the named descriptor out of the table.
pub fn take(name: &str) -> Result<OwnedFd, String> {
    FDS.with(|f| {
        let named = &mut f.borrow_mut().named;
        match named.iter().position(|(n, _)| n == name) {
            Some(p) => Ok(named.remove(p).1),
            None => Err(format!("File descriptor named '{name}' has not been found")),
        }
    })
}

/// QEMU's `monitor_fd_param`: a name on a monitor, else a descriptor number
/// this process inherited. migtest-vmm duplicates an inherited descriptor
/// (close-on-exec) instead of taking it over, so a wrong number can never
/// close a descriptor the VMM itself uses.
pub fn fd_param(name: &str) -> Result<OwnedFd, String> {
    let on_monitor = FDS.with(|f| f.borrow().is_monitor);
    if on_monitor && !name.starts_with(|c: char| c.is_ascii_digit()) {
        return take(name);
    }
    let invalid = || format!("Invalid file descriptor number '{name}'");
    let n: i32 = name.parse().map_err(|_| invalid())?;
    if n < 0 {
        return Err(invalid());
    }
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on any integer is sound; it fails with
    // EBADF on a number that is not an open descriptor.
    let dup = unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(invalid());
    }
    // SAFETY: `dup` is a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Reads from a monitor socket, keeping descriptors passed with SCM_RIGHTS.
pub fn recv_with_fds(stream: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let space = unsafe {
        // SAFETY: CMSG_SPACE only computes a size.
        libc::CMSG_SPACE((MAX_FDS_PER_MESSAGE * std::mem::size_of::<i32>()) as u32)
    } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: msg points at live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* walk stays inside msg_control as the kernel filled it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<i32>();
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<i32>() {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n, fds))
}

/// Writes `data` with `fd` attached (SCM_RIGHTS): how a management layer
/// passes a descriptor to `getfd` (used by the harness's QMP client).
pub fn send_with_fd(stream: &UnixStream, data: &[u8], fd: RawFd) -> io::Result<usize> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer has room for one header with one int;
    // sendmsg only reads the buffers.
    let n = unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: serde_json::Value) -> Args {
        Args::new(v.as_object().cloned())
    }

    fn pass(fd: &impl AsRawFd) {
        // SAFETY: dup of a live descriptor.
        let d = unsafe { libc::dup(fd.as_raw_fd()) };
        assert!(d >= 0);
        set_received(vec![unsafe { OwnedFd::from_raw_fd(d) }]);
    }

    #[test]
    fn getfd_closefd_texts() {
        enter_monitor();
        let e = getfd(args(json!({"fdname": "a"}))).unwrap_err();
        assert_eq!(e.desc, "No file descriptor supplied via SCM_RIGHTS");
        let (s, _peer) = UnixStream::pair().unwrap();
        pass(&s);
        let e = getfd(args(json!({"fdname": "1a"}))).unwrap_err();
        assert_eq!(
            e.desc,
            "Parameter 'fdname' expects a name not starting with a digit"
        );
        // The descriptor was consumed by the failed getfd, as in QEMU.
        assert!(getfd(args(json!({"fdname": "a"}))).is_err());
        pass(&s);
        getfd(args(json!({"fdname": "a"}))).unwrap();
        closefd(args(json!({"fdname": "a"}))).unwrap();
        let e = closefd(args(json!({"fdname": "a"}))).unwrap_err();
        assert_eq!(e.desc, "File descriptor named 'a' not found");
        assert_eq!(
            take("a").unwrap_err(),
            "File descriptor named 'a' has not been found"
        );
        pass(&s);
        getfd(args(json!({"fdname": "mig"}))).unwrap();
        assert!(fd_param("mig").is_ok());
        assert!(fd_param("mig").is_err());
        assert_eq!(
            fd_param("99999").unwrap_err(),
            "Invalid file descriptor number '99999'"
        );
    }

    #[test]
    fn off_monitor_names_are_numbers() {
        // A fresh thread is no monitor (the -incoming option).
        std::thread::spawn(|| {
            assert_eq!(
                fd_param("mig").unwrap_err(),
                "Invalid file descriptor number 'mig'"
            );
            assert!(fd_param("0").is_ok());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn recv_keeps_passed_descriptor() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, _y) = UnixStream::pair().unwrap();
        assert_eq!(send_with_fd(&a, b"{", x.as_raw_fd()).unwrap(), 1);
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!((n, &buf[..1], fds.len()), (1, &b"{"[..], 1));
    }
}
