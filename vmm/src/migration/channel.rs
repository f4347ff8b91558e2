//! The `file:PATH[,offset=N]` and `fd:NAME` transports: channels that
//! exist before the migration starts (QEMU's `migration/file.c` and
//! `migration/fd.c`). Both sides open them in the QMP command itself, so
//! their errors are the command's errors (and `fd:` finds the descriptor
//! on the monitor that runs the command).

use super::transport::{Conn, MigrationUri};
use crate::monitor_fds;
use migtest_qmp::ErrorBody;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;

/// QEMU's `file_parse_offset`: `PATH,offset=N` with `N` a size
/// (`qemu_strtosz`: a number with an optional B/K/M/G/T/P/E suffix).
pub(crate) fn parse_file(spec: &str) -> Result<MigrationUri, ErrorBody> {
    let (path, offset) = match spec.find(",offset=") {
        Some(i) => {
            let text = &spec[i + ",offset=".len()..];
            let offset = parse_size(text).map_err(|errno| {
                ErrorBody::generic(format!("file URI has bad offset {text}: {errno}"))
            })?;
            (&spec[..i], offset)
        }
        None => (spec, 0),
    };
    Ok(MigrationUri::File {
        path: path.to_string(),
        offset,
    })
}

/// `qemu_strtosz` for the values a file URI uses; the error is the
/// `strerror` text QEMU appends.
fn parse_size(text: &str) -> Result<u64, &'static str> {
    const EINVAL: &str = "Invalid argument";
    const ERANGE: &str = "Numerical result out of range";
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(EINVAL);
    }
    let n: u64 = text[..digits].parse().map_err(|_| ERANGE)?;
    let shift = match text[digits..].to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        "E" => 60,
        _ => return Err(EINVAL),
    };
    n.checked_mul(1u64 << shift).ok_or(ERANGE)
}

fn open_at(path: &str, offset: u64, write: bool) -> Result<File, String> {
    let mut o = OpenOptions::new();
    if write {
        o.write(true).create(true).truncate(true).mode(0o600);
    } else {
        o.read(true);
    }
    let mut f = o.open(path).map_err(|e| {
        format!(
            "Unable to open {path}: {}",
            super::stream::os_error_text(&e)
        )
    })?;
    if offset > 0 {
        f.seek(SeekFrom::Start(offset)).map_err(|e| {
            format!(
                "Unable to seek to offset {offset} whence 0 in file: {}",
                super::stream::os_error_text(&e)
            )
        })?;
    }
    Ok(f)
}

/// A channel that is opened (or looked up) by the command itself, or
/// `None` for the socket transports, which connect/listen later.
pub(crate) fn open_now(uri: &MigrationUri, outgoing: bool) -> Result<Option<Conn>, String> {
    match uri {
        MigrationUri::File { path, offset } => {
            open_at(path, *offset, outgoing).map(Conn::File).map(Some)
        }
        MigrationUri::Fd(name) => {
            let fd = monitor_fds::fd_param(name)?;
            // Any socket works through a UnixStream handle (read, write and
            // shutdown are the same calls); a pipe or file works too, its
            // shutdown simply fails.
            Ok(Some(Conn::Unix(UnixStream::from(fd))))
        }
        MigrationUri::Unix(_) | MigrationUri::Tcp { .. } => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_and_offsets() {
        let p = |s: &str| MigrationUri::parse(s);
        assert_eq!(
            p("file:/tmp/m").unwrap(),
            MigrationUri::File {
                path: "/tmp/m".into(),
                offset: 0
            }
        );
        assert_eq!(
            p("file:/tmp/m,offset=4k").unwrap(),
            MigrationUri::File {
                path: "/tmp/m".into(),
                offset: 4096
            }
        );
        assert_eq!(
            p("file:/tmp/m,offset=x").unwrap_err().desc,
            "file URI has bad offset x: Invalid argument"
        );
        assert_eq!(
            p("file:/tmp/m,offset=99999E").unwrap_err().desc,
            "file URI has bad offset 99999E: Numerical result out of range"
        );
        assert_eq!(p("fd:mig").unwrap(), MigrationUri::Fd("mig".into()));
    }

    #[test]
    fn open_errors_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such").to_string_lossy().into_owned();
        let e = open_now(
            &MigrationUri::parse(&format!("file:{missing}")).unwrap(),
            true,
        )
        .unwrap_err();
        assert_eq!(
            e,
            format!("Unable to open {missing}: No such file or directory")
        );
        let path = dir.path().join("m").to_string_lossy().into_owned();
        let uri = MigrationUri::parse(&format!("file:{path},offset=3")).unwrap();
        let Some(mut c) = open_now(&uri, true).unwrap() else {
            panic!("no channel")
        };
        std::io::Write::write_all(&mut c, b"xy").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0\0xy");
        let Some(mut c) = open_now(&uri, false).unwrap() else {
            panic!("no channel")
        };
        let mut s = String::new();
        std::io::Read::read_to_string(&mut c, &mut s).unwrap();
        assert_eq!(s, "xy");
    }
}
