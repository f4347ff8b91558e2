//! The QEMU-shaped command line of `migtest-vmm`.
//!
//! Options take one argument each, as in QEMU (`-m 256M`, `-qmp unix:...`).
//! A bad option or value yields one line on stderr and exit status 1, like
//! `qemu-system-x86_64`.

mod memory_backend;

use crate::guest::RamBacking;
use crate::migration::MigrationUri;
use std::path::PathBuf;

/// Where the serial port's output goes (`-serial`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialTarget {
    /// `file:PATH`
    File(PathBuf),
    /// `stdio`
    Stdio,
    /// `none`
    None,
}

/// A QMP monitor socket (`-qmp unix:PATH,server=on,wait=off`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpSocket {
    /// Unix socket path to listen on.
    pub path: PathBuf,
}

/// Everything the command line configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Guest RAM in bytes (`-m`, default 128 MiB like QEMU).
    pub ram_size: u64,
    /// Number of vCPUs (`-smp`).
    pub vcpus: u32,
    /// VM name (`-name`).
    pub name: Option<String>,
    /// QMP monitors (`-qmp`, repeatable).
    pub qmp: Vec<QmpSocket>,
    /// Start with the vCPUs stopped (`-S`).
    pub start_paused: bool,
    /// Serial port output (`-serial`, default none as with `-nodefaults`).
    pub serial: SerialTarget,
    /// The guest image (`-kernel`).
    pub kernel: Option<PathBuf>,
    /// Incoming migration (`-incoming defer|unix:PATH|tcp:HOST:PORT`).
    pub incoming: Option<String>,
    /// `-mem-prealloc`: fault in all guest RAM at start-up, before the
    /// monitor answers (QEMU's `prealloc=on` on every memory backend).
    pub mem_prealloc: bool,
    /// What guest RAM is mapped from: the backend `-machine
    /// memory-backend=ID` names, anonymous memory without one.
    pub ram_backing: RamBacking,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ram_size: 128 << 20,
            vcpus: 1,
            name: None,
            qmp: Vec::new(),
            start_paused: false,
            serial: SerialTarget::None,
            kernel: None,
            incoming: None,
            mem_prealloc: false,
            ram_backing: RamBacking::Anonymous,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// Run a VM.
    Run(Options),
    /// `-version`
    Version,
    /// `-h` / `-help`
    Help,
}

/// A command-line error: printed as `migtest-vmm: <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

/// The usage text for `-help`.
pub const USAGE: &str = "\
usage: migtest-vmm [options]
  -m SIZE                 guest RAM (default 128M; suffixes K, M, G, T; no suffix = MiB)
  -smp N                  number of vCPUs (default 1)
  -name NAME              VM name (query-name)
  -qmp unix:PATH,server=on,wait=off   QMP monitor (repeatable)
  -S                      do not start the vCPUs (prelaunch)
  -serial file:PATH|stdio|none
  -kernel IMAGE           guest image (guest-images/*.toml)
  -incoming defer|unix:PATH|tcp:HOST:PORT
  -mem-prealloc           fault in all guest RAM at start-up (as QEMU's)
  -object memory-backend-ram,id=ID,size=SIZE[,prealloc=on]
  -object memory-backend-file,id=ID,size=SIZE,mem-path=PATH[,share=on|off][,prealloc=on]
  -machine [none][,accel=tcg][,memory-backend=ID]   guest RAM from backend ID
  -nodefaults, -display none, -accel tcg   accepted for QEMU compatibility
  -version, -help
";

/// Parses a QEMU size: a number with an optional K/M/G/T/P/E suffix
/// (binary), `default_shift` applying when there is no suffix.
pub fn parse_size(s: &str, default_shift: u32) -> Option<u64> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                'E' => 60,
                _ => return None,
            };
            (&s[..i], shift)
        }
        _ => (s, default_shift),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    n.checked_mul(1u64.checked_shl(shift)?)
}

fn split_opts(value: &str) -> Vec<(&str, Option<&str>)> {
    value
        .split(',')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (kv, None),
        })
        .collect()
}

fn parse_ram(value: &str) -> Result<u64, CliError> {
    // QEMU accepts "-m 256M" and "-m size=256M".
    let mut size = None;
    for (i, (k, v)) in split_opts(value).into_iter().enumerate() {
        match (k, v) {
            (s, None) if i == 0 => size = Some(s),
            ("size", Some(s)) => size = Some(s),
            (other, _) => return Err(CliError(format!("-m {value}: Invalid parameter '{other}'"))),
        }
    }
    let bytes = size.and_then(|s| parse_size(s, 20)).ok_or_else(|| {
        CliError(format!(
            "-m {value}: Parameter 'size' expects a size (K, M, G or T suffix)"
        ))
    })?;
    check_ram_size(bytes).map_err(|why| CliError(format!("-m {value}: {why}")))?;
    Ok(bytes)
}

/// Guest RAM sizes migtest-vmm runs (`-m` and memory backends alike).
fn check_ram_size(bytes: u64) -> Result<(), &'static str> {
    if bytes == 0 || !bytes.is_multiple_of(4096) {
        return Err("RAM size must be a non-zero multiple of 4 KiB");
    }
    if bytes > 64 << 30 {
        return Err("RAM size above 64G is not supported");
    }
    Ok(())
}

fn parse_smp(value: &str) -> Result<u32, CliError> {
    let mut cpus = None;
    for (i, (k, v)) in split_opts(value).into_iter().enumerate() {
        match (k, v) {
            (n, None) if i == 0 => cpus = Some(n),
            ("cpus", Some(n)) => cpus = Some(n),
            ("sockets" | "cores" | "threads" | "maxcpus", Some(_)) => {}
            (other, _) => {
                return Err(CliError(format!(
                    "-smp {value}: Invalid parameter '{other}'"
                )))
            }
        }
    }
    match cpus.map(str::parse::<u32>) {
        Some(Ok(n)) if (1..=64).contains(&n) => Ok(n),
        Some(Ok(n)) => Err(CliError(format!(
            "-smp {value}: Invalid SMP CPUs {n}. The max CPUs supported by machine 'migtest' is 64"
        ))),
        _ => Err(CliError(format!(
            "-smp {value}: Parameter 'cpus' expects a number"
        ))),
    }
}

fn parse_name(value: &str) -> Result<String, CliError> {
    let mut name = None;
    for (i, (k, v)) in split_opts(value).into_iter().enumerate() {
        match (k, v) {
            (n, None) if i == 0 => name = Some(n.to_string()),
            ("guest", Some(n)) => name = Some(n.to_string()),
            ("debug-threads" | "process", Some(_)) => {}
            (other, _) => {
                return Err(CliError(format!(
                    "-name {value}: Invalid parameter '{other}'"
                )))
            }
        }
    }
    name.ok_or_else(|| CliError(format!("-name {value}: Parameter 'guest' is missing")))
}

fn parse_qmp(value: &str) -> Result<QmpSocket, CliError> {
    let bad = |why: &str| CliError(format!("-qmp {value}: {why}"));
    let mut parts = split_opts(value).into_iter();
    let (first, _) = parts.next().ok_or_else(|| bad("missing address"))?;
    let path = first
        .strip_prefix("unix:")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("only unix:PATH sockets are supported"))?;
    for (k, v) in parts {
        match (k, v) {
            ("server", None | Some("on")) | ("wait", Some("off")) | ("nowait", None) => {}
            ("server", Some("off")) => {
                return Err(bad("client mode (server=off) is not supported"))
            }
            ("wait", Some("on")) => return Err(bad("wait=on is not supported")),
            (other, _) => return Err(bad(&format!("Invalid parameter '{other}'"))),
        }
    }
    if path.len() >= 108 {
        return Err(bad("UNIX socket path is too long"));
    }
    Ok(QmpSocket {
        path: PathBuf::from(path),
    })
}

fn parse_serial(value: &str) -> Result<SerialTarget, CliError> {
    match value {
        "stdio" => Ok(SerialTarget::Stdio),
        "none" | "null" => Ok(SerialTarget::None),
        v => match v.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialTarget::File(PathBuf::from(p))),
            _ => Err(CliError(format!(
                "-serial {value}: 'file:PATH', 'stdio' or 'none' expected"
            ))),
        },
    }
}

fn check_incoming(value: &str) -> Result<String, CliError> {
    // The same parser as `migrate-incoming` and `migrate` use.
    let ok = value == "defer" || MigrationUri::parse(value).is_ok();
    if ok {
        Ok(value.to_string())
    } else {
        Err(CliError(format!(
            "-incoming {value}: unknown migration protocol (expected defer, unix:PATH or tcp:HOST:PORT)"
        )))
    }
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Invocation, CliError> {
    let mut opts = Options::default();
    let (mut explicit_ram_size, mut backends, mut memdev) = (None, Vec::new(), None);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // QEMU accepts --opt as well as -opt.
        let opt = arg
            .strip_prefix("--")
            .map(|s| format!("-{s}"))
            .unwrap_or(arg.clone());
        let mut value = |opt: &str| {
            args.next()
                .ok_or_else(|| CliError(format!("{opt}: requires an argument")))
        };
        match opt.as_str() {
            "-version" => return Ok(Invocation::Version),
            "-h" | "-help" => return Ok(Invocation::Help),
            "-S" => opts.start_paused = true,
            "-nodefaults" => {}
            "-mem-prealloc" => opts.mem_prealloc = true,
            "-m" => explicit_ram_size = Some(parse_ram(&value("-m")?)?),
            "-object" => backends.push(memory_backend::parse_object(&value("-object")?)?),
            "-machine" => {
                if let Some(id) = memory_backend::parse_machine(&value("-machine")?)? {
                    memdev = Some(id);
                }
            }
            "-smp" => opts.vcpus = parse_smp(&value("-smp")?)?,
            "-name" => opts.name = Some(parse_name(&value("-name")?)?),
            "-qmp" => opts.qmp.push(parse_qmp(&value("-qmp")?)?),
            "-serial" => opts.serial = parse_serial(&value("-serial")?)?,
            "-kernel" => opts.kernel = Some(PathBuf::from(value("-kernel")?)),
            "-incoming" => opts.incoming = Some(check_incoming(&value("-incoming")?)?),
            "-display" => {
                let v = value("-display")?;
                if v != "none" {
                    return Err(CliError(format!("-display {v}: only 'none' is supported")));
                }
            }
            "-accel" => {
                let v = value(&opt)?;
                let first = v.split(',').next().unwrap_or("");
                // `-accel kvm -accel tcg` is QEMU's try-KVM-then-TCG idiom;
                // migtest-vmm always uses software dirty tracking (TCG's way).
                if !["tcg", "qtest", "kvm"].contains(&first) {
                    return Err(CliError(format!(
                        "{opt} {v}: invalid accelerator {first} (migtest-vmm only has tcg)"
                    )));
                }
            }
            #[cfg(feature = "fault-injection")]
            "-x-fault" => {
                crate::migration::faults::enable(&value("-x-fault")?).map_err(CliError)?
            }
            other if other.starts_with('-') => {
                return Err(CliError(format!("{other}: invalid option")))
            }
            other => {
                return Err(CliError(format!(
                "{other}: unexpected argument (disk images are not supported; use -kernel IMAGE)"
            )))
            }
        }
    }
    match memory_backend::resolve(&backends, memdev.as_deref(), explicit_ram_size)? {
        Some(backend) => {
            opts.ram_size = backend.size;
            opts.ram_backing = backend.backing.clone();
            opts.mem_prealloc |= backend.prealloc;
        }
        None => opts.ram_size = explicit_ram_size.unwrap_or(opts.ram_size),
    }
    Ok(Invocation::Run(opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, CliError> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Invocation::Run(o) => Ok(o),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn qemu_style_command_line() {
        let o = run(&[
            "-name",
            "source,debug-threads=on",
            "-m",
            "256M",
            "-smp",
            "2",
            "-S",
            "-qmp",
            "unix:/tmp/a.sock,server=on,wait=off",
            "-qmp",
            "unix:/tmp/b.sock,server,nowait",
            "-serial",
            "file:/tmp/s",
            "-kernel",
            "sweep.toml",
            "-nodefaults",
            "-display",
            "none",
            "-accel",
            "kvm",
            "-accel",
            "tcg",
            "-incoming",
            "tcp:127.0.0.1:0",
            "-mem-prealloc",
        ])
        .unwrap();
        assert_eq!(o.ram_size, 256 << 20);
        assert_eq!(o.vcpus, 2);
        assert_eq!(o.name.as_deref(), Some("source"));
        assert_eq!(o.qmp.len(), 2);
        assert!(o.start_paused);
        assert_eq!(o.serial, SerialTarget::File("/tmp/s".into()));
        assert_eq!(o.incoming.as_deref(), Some("tcp:127.0.0.1:0"));
        assert!(o.mem_prealloc);
        assert!(!run(&["-m", "1G"]).unwrap().mem_prealloc);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("150", 20), Some(150 << 20));
        assert_eq!(parse_size("1G", 20), Some(1 << 30));
        assert_eq!(parse_size("4k", 20), Some(4096));
        assert_eq!(parse_size("x", 20), None);
        assert_eq!(parse_size("99999999999999E", 20), None);
        assert_eq!(parse_size("", 20), None);
    }

    #[test]
    fn bad_options_are_one_line_errors() {
        for bad in [
            &["-m", "lots"][..],
            &["-m", "0"],
            &["-smp", "0"],
            &["-smp", "x"],
            &["-qmp", "tcp:1:2"],
            &["-serial", "pty"],
            &["-incoming", "rdma:1.2.3.4:5"],
            &["-bogus"],
            &["-m"],
            &["disk.img"],
            &["-accel", "hvf"],
        ] {
            let err = run(bad).unwrap_err();
            assert!(!err.0.contains('\n'), "{err}");
            assert!(!err.0.is_empty());
        }
        // 1000 MiB is fine; 1000 bytes is not.
        assert!(run(&["-m", "1000"]).is_ok());
        assert!(run(&["-m", "1000b"]).is_err());
    }
}
