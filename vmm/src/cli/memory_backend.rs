//! `-object memory-backend-ram|memory-backend-file,...` and
//! `-machine memory-backend=ID`: guest RAM from a named backend, with
//! QEMU 7.2's rules and error texts.

use super::{check_ram_size, parse_size, split_opts, CliError};
use crate::guest::RamBacking;
use std::path::PathBuf;

/// One `-object memory-backend-*` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MemoryBackend {
    /// `id=`
    pub id: String,
    /// `size=` in bytes.
    pub size: u64,
    /// Anonymous (`memory-backend-ram`) or `mem-path` (`memory-backend-file`).
    pub backing: RamBacking,
    /// `prealloc=on`
    pub prealloc: bool,
}

fn on_off(value: &str, key: &str, v: Option<&str>) -> Result<bool, CliError> {
    match v {
        Some("on" | "yes" | "true") | None => Ok(true),
        Some("off" | "no" | "false") => Ok(false),
        Some(_) => Err(CliError(format!(
            "-object {value}: Parameter '{key}' expects 'on' or 'off'"
        ))),
    }
}

/// Parses one `-object` value. Only memory backends exist in migtest-vmm.
pub(super) fn parse_object(value: &str) -> Result<MemoryBackend, CliError> {
    let bad = |why: String| CliError(format!("-object {value}: {why}"));
    let mut opts = split_opts(value).into_iter();
    let kind = match opts.next() {
        Some((k, None)) | Some(("qom-type", Some(k))) => k,
        _ => return Err(bad("Parameter 'qom-type' is missing".into())),
    };
    let file = match kind {
        "memory-backend-ram" => false,
        "memory-backend-file" => true,
        other => return Err(bad(format!("invalid object type: {other}"))),
    };
    let (mut id, mut size, mut mem_path, mut share, mut prealloc) =
        (None, None, None, false, false);
    for (k, v) in opts {
        match (k, v) {
            ("id", Some(i)) if !i.is_empty() => id = Some(i.to_string()),
            ("size", Some(s)) => {
                size = Some(parse_size(s, 0).ok_or_else(|| {
                    bad("Parameter 'size' expects a non-negative number below 2^64".into())
                })?)
            }
            ("mem-path", Some(p)) if file && !p.is_empty() => mem_path = Some(PathBuf::from(p)),
            ("share", v) => share = on_off(value, k, v)?,
            ("prealloc", v) => prealloc = on_off(value, k, v)?,
            // Accepted for QEMU compatibility; they change nothing here.
            ("merge" | "dump", v) => {
                on_off(value, k, v)?;
            }
            ("prealloc-threads", Some(n)) if n.parse::<u32>().is_ok() => {}
            (other, _) => return Err(bad(format!("Property '{kind}.{other}' not found"))),
        }
    }
    let id = id.ok_or_else(|| bad("Parameter 'id' is missing".into()))?;
    let size = match size {
        None | Some(0) => return Err(bad("can't create backend with size 0".into())),
        Some(s) => s,
    };
    check_ram_size(size).map_err(|why| bad(why.into()))?;
    let backing = match (file, mem_path) {
        (false, _) => RamBacking::Anonymous,
        (true, Some(path)) => RamBacking::File { path, share },
        (true, None) => return Err(bad("mem-path property not set".into())),
    };
    Ok(MemoryBackend {
        id,
        size,
        backing,
        prealloc,
    })
}

/// `-machine`: QEMU's `[type=]none`, `accel=tcg` and `memory-backend=ID`;
/// returns the memory backend's id when one is named.
pub(super) fn parse_machine(value: &str) -> Result<Option<String>, CliError> {
    let bad = |why: String| CliError(format!("-machine {value}: {why}"));
    let mut memdev = None;
    for (i, (k, v)) in split_opts(value).into_iter().enumerate() {
        match (k, v) {
            ("" | "none" | "migtest", None) if i == 0 => {}
            ("type", Some("none" | "migtest")) => {}
            ("accel", Some(a)) => {
                if !a.split(':').any(|a| a == "tcg" || a == "qtest") {
                    return Err(bad(format!(
                        "invalid accelerator {a} (migtest-vmm only has tcg)"
                    )));
                }
            }
            ("memory-backend", Some(id)) if !id.is_empty() => memdev = Some(id.to_string()),
            (t, None) if i == 0 => {
                return Err(bad(format!(
                    "unsupported machine type '{t}' (migtest-vmm has 'none')"
                )))
            }
            (other, _) => return Err(bad(format!("Invalid parameter '{other}'"))),
        }
    }
    Ok(memdev)
}

/// Checks the backends (unique ids) and picks the one `-machine
/// memory-backend=` names; an explicit `-m` must match its size.
pub(super) fn resolve<'a>(
    backends: &'a [MemoryBackend],
    memdev: Option<&str>,
    explicit_ram_size: Option<u64>,
) -> Result<Option<&'a MemoryBackend>, CliError> {
    for (i, b) in backends.iter().enumerate() {
        if backends[..i].iter().any(|o| o.id == b.id) {
            return Err(CliError(format!(
                "attempt to add duplicate property '{}' to object (type 'container')",
                b.id
            )));
        }
    }
    let Some(id) = memdev else {
        return Ok(None);
    };
    let backend = backends
        .iter()
        .find(|b| b.id == id)
        .ok_or_else(|| CliError(format!("Memory backend '{id}' not found")))?;
    if explicit_ram_size.is_some_and(|m| m != backend.size) {
        return Err(CliError(
            "Size specified by -m option must match size of explicitly specified 'memory-backend' property"
                .into(),
        ));
    }
    Ok(Some(backend))
}
