//! Backends: which VMM binary to run and how its command line looks.
//!
//! [`Backend::Builtin`] runs `migtest-vmm` (see [`builtin`] for how the
//! binary and guest images are found); [`Backend::Qemu`] runs a
//! `qemu-system-x86_64`. A [`LaunchSpec`] describes one VM independent of
//! the backend; [`Backend::command_line`] turns it into a full command line
//! whose sockets and logs live in the VM's log directory.

pub mod builtin;
pub mod qemu;

use std::path::{Path, PathBuf};

use crate::process::{QMP_SOCKET, SERIAL_LOG, TELEMETRY_SOCKET};

/// Which VMM to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `migtest-vmm`, found by [`builtin::vmm_binary`].
    Builtin,
    /// A QEMU system emulator. Guests other than `none` boot QEMU's x86 A-B
    /// boot sector ([`qemu::ab_image`], patched for the RAM size and written
    /// into the VM's log directory).
    Qemu {
        /// The `qemu-system-x86_64` binary.
        binary: PathBuf,
        /// `-machine` value, e.g. `none`, `pc`, `q35`, `pc-i440fx-7.2`.
        machine: String,
    },
}

impl Backend {
    /// QEMU from `MIGTEST_QEMU`, else `QTEST_QEMU_BINARY`, else
    /// `qemu-system-x86_64` on `PATH`, with the given machine.
    pub fn qemu(machine: &str) -> Backend {
        let binary = std::env::var_os("MIGTEST_QEMU")
            .or_else(|| std::env::var_os("QTEST_QEMU_BINARY"))
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        Backend::qemu_at(binary, machine)
    }

    /// QEMU at `binary` with the given machine.
    pub fn qemu_at(binary: impl Into<PathBuf>, machine: &str) -> Backend {
        Backend::Qemu {
            binary: binary.into(),
            machine: machine.to_string(),
        }
    }

    /// The QEMU source and destination for a run: binaries resolved from
    /// the command line and environment ([`qemu::resolve_binaries`]), and
    /// the newest `pc-i440fx` machine type both support (or
    /// `QTEST_QEMU_MACHINE_TYPE`).
    pub fn qemu_pair(args: &qemu::QemuBinaryArgs) -> anyhow::Result<(Backend, Backend)> {
        let bins = qemu::resolve_binaries(args)?;
        let machines = |bin: &Path| -> anyhow::Result<Vec<qemu::MachineInfo>> {
            let out = std::process::Command::new(bin)
                .args(["-machine", "help"])
                .output()
                .map_err(|e| anyhow::anyhow!("running {} -machine help: {e}", bin.display()))?;
            anyhow::ensure!(
                out.status.success(),
                "{} -machine help failed: {}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Ok(qemu::parse_machine_help(&String::from_utf8_lossy(
                &out.stdout,
            )))
        };
        let src = machines(&bins.src)?;
        let dst = if bins.same() {
            src.clone()
        } else {
            machines(&bins.dst)?
        };
        let override_ = std::env::var("QTEST_QEMU_MACHINE_TYPE").ok();
        let machine = qemu::resolve_machine(
            override_.as_deref(),
            &src,
            &dst,
            qemu::MachineFamily::I440fx,
        )?;
        Ok((
            Backend::qemu_at(bins.src, &machine),
            Backend::qemu_at(bins.dst, &machine),
        ))
    }

    /// A short name: `builtin` or `qemu`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Builtin => "builtin",
            Backend::Qemu { .. } => "qemu",
        }
    }

    /// Whether this is a QEMU backend.
    pub fn is_qemu(&self) -> bool {
        matches!(self, Backend::Qemu { .. })
    }

    /// A human description, e.g. `qemu /usr/bin/qemu-system-x86_64 (machine pc)`.
    pub fn describe(&self) -> String {
        match self {
            Backend::Builtin => match builtin::vmm_binary() {
                Ok(p) => format!("builtin {}", p.display()),
                Err(_) => "builtin migtest-vmm (not found)".to_string(),
            },
            Backend::Qemu { binary, machine } => {
                format!("qemu {} (machine {machine})", binary.display())
            }
        }
    }

    /// The guest range `[start, end)` the A-B check covers for `image` with
    /// `memory_bytes` of RAM.
    pub fn test_range(&self, image: &str, memory_bytes: u64) -> anyhow::Result<(u64, u64)> {
        match self {
            Backend::Qemu { .. } => Ok(qemu::test_range(memory_bytes)),
            Backend::Builtin => builtin::test_range(image, memory_bytes),
        }
    }

    /// The binary this backend runs (looked up for the builtin backend).
    pub fn binary(&self) -> anyhow::Result<PathBuf> {
        match self {
            Backend::Builtin => builtin::vmm_binary(),
            Backend::Qemu { binary, .. } => Ok(binary.clone()),
        }
    }

    /// The program and its full argument list for `spec` (see
    /// [`Backend::command_line`]).
    pub fn launch_command(
        &self,
        spec: &LaunchSpec,
        dir: &Path,
    ) -> anyhow::Result<(PathBuf, Vec<String>)> {
        let (program, mut args) = match self {
            Backend::Builtin => {
                let c = builtin::vmm_command()?;
                (c.program, c.prefix)
            }
            Backend::Qemu { binary, .. } => (binary.clone(), Vec::new()),
        };
        args.extend(self.command_line(spec, dir)?);
        Ok((program, args))
    }

    /// The arguments (without the program) for `spec`, with sockets and
    /// logs placed in `dir`. For QEMU with a guest this also writes the
    /// patched A-B boot sector into `dir`.
    pub fn command_line(&self, spec: &LaunchSpec, dir: &Path) -> anyhow::Result<Vec<String>> {
        let mut args: Vec<String> = vec!["-name".into(), spec.name.clone()];
        if spec.memory_bytes != 0 {
            args.push("-m".into());
            args.push(format_size(spec.memory_bytes));
        }
        args.push("-smp".into());
        args.push(spec.vcpus.to_string());
        match self {
            Backend::Builtin => {
                let image = builtin::image_path(&spec.image);
                args.push("-kernel".into());
                args.push(image.to_string_lossy().into_owned());
            }
            Backend::Qemu { machine, .. } => {
                args.push("-machine".into());
                args.push(machine.clone());
                if spec.image != "none" {
                    let (_, end) = qemu::test_range(spec.memory_bytes);
                    let img = qemu::ab_image(end, qemu::PASS_MASK_DEFAULT)?;
                    let path = dir.join("a-b-bootblock.img");
                    std::fs::write(&path, img)?;
                    args.push("-drive".into());
                    args.push(format!(
                        "if=none,id=d0,file={},format=raw",
                        qemu::escape_commas(&path.to_string_lossy())
                    ));
                    args.push("-device".into());
                    args.push("ide-hd,drive=d0,secs=1,cyls=1,heads=1".into());
                }
            }
        }
        args.extend(["-nodefaults", "-display", "none"].map(String::from));
        match self {
            Backend::Builtin => args.extend(["-accel", "tcg"].map(String::from)),
            Backend::Qemu { .. } => {
                args.extend(qemu::Accel::from_env().args(qemu::kvm_usable()));
            }
        }
        args.push("-serial".into());
        args.push(format!("file:{}", dir.join(SERIAL_LOG).to_string_lossy()));
        // A second monitor for the telemetry sampler (`crate::telemetry`),
        // so its queries and events stay out of the test's connection.
        for socket in [QMP_SOCKET, TELEMETRY_SOCKET] {
            args.push("-qmp".into());
            args.push(format!(
                "unix:{},server=on,wait=off",
                dir.join(socket).to_string_lossy()
            ));
        }
        if spec.paused {
            args.push("-S".into());
        }
        if let Some(uri) = &spec.incoming {
            args.push("-incoming".into());
            args.push(resolve_incoming(uri, dir));
        }
        args.extend(spec.extra_args.iter().cloned());
        Ok(args)
    }
}

/// Environment variable: `1` lets QEMU test cases pass without running when
/// no QEMU binary is found (they print that they were not run).
pub const ENV_MIGTEST_SKIP_QEMU: &str = "MIGTEST_SKIP_QEMU";

/// Guest RAM of the QEMU test-suite cases: 32 MiB (test range 1-31 MiB).
/// Under the legacy hold every pass re-sends the test range at 3 MB/s:
/// 10.5 s a pass at 32 MiB against 34.5 s at 128 MiB (QEMU 7.2, TCG).
pub const QEMU_TEST_MEMORY: crate::size::Size = crate::size::Size::mib(32);

/// For test suites: the QEMU source and destination from the environment
/// ([`Backend::qemu_pair`] with no command-line options).
///
/// When no QEMU binary is configured or found in `PATH`, this is an error
/// naming `test` and how to point migtest at QEMU, unless
/// `MIGTEST_SKIP_QEMU=1`: then it prints that `test` was NOT run and returns
/// `Ok(None)`. A configured but unusable binary is always an error.
pub fn qemu_pair_for_test(test: &str) -> anyhow::Result<Option<(Backend, Backend)>> {
    let args = qemu::QemuBinaryArgs::default();
    match qemu::resolve_binaries(&args) {
        Err(e @ qemu::QemuError::NoBinary { .. }) => {
            let skip = std::env::var(ENV_MIGTEST_SKIP_QEMU).is_ok_and(|v| v == "1");
            if skip {
                eprintln!(
                    "migtest: NOT RUN: {test}: no QEMU binary ({e}); \
                     {ENV_MIGTEST_SKIP_QEMU}=1 is set, so this case passes without running"
                );
                Ok(None)
            } else {
                anyhow::bail!(
                    "{test} needs QEMU and none was found: {e}. Install qemu-system-x86 \
                     (ci/test does), or set {ENV_MIGTEST_SKIP_QEMU}=1 to skip the QEMU cases"
                )
            }
        }
        Err(e) => Err(e.into()),
        Ok(_) => Backend::qemu_pair(&args).map(Some),
    }
}

/// The migration socket used when an incoming URI is just `unix:`.
pub const MIGRATION_SOCKET: &str = "mig.sock";

/// `unix:` (empty path) becomes `unix:DIR/mig.sock`; other URIs are kept.
pub fn resolve_incoming(uri: &str, dir: &Path) -> String {
    if uri == "unix:" || uri == "unix" {
        format!("unix:{}", dir.join(MIGRATION_SOCKET).to_string_lossy())
    } else {
        uri.to_string()
    }
}

/// Formats a byte count for `-m`: the largest exact unit of G, M, K (QEMU
/// reads a bare number as MiB, so bytes always get a suffix).
pub fn format_size(bytes: u64) -> String {
    const K: u64 = 1024;
    if bytes != 0 && bytes.is_multiple_of(K * K * K) {
        format!("{}G", bytes / (K * K * K))
    } else if bytes != 0 && bytes.is_multiple_of(K * K) {
        format!("{}M", bytes / (K * K))
    } else if bytes != 0 && bytes.is_multiple_of(K) {
        format!("{}K", bytes / K)
    } else {
        format!("{bytes}B")
    }
}

/// One VM to launch, independent of the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    /// `-name`, e.g. `source` or `target`.
    pub name: String,
    /// Guest RAM in bytes (0: no `-m`, the backend's default).
    pub memory_bytes: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest image name for the builtin VMM (`sweep`, `idle`, ...; resolved
    /// to `guest-images/NAME.toml`). The QEMU backend uses its boot sector.
    pub image: String,
    /// `-incoming`: `defer`, `unix:PATH` (`unix:` = a socket in the VM's
    /// log directory), `tcp:127.0.0.1:0`.
    pub incoming: Option<String>,
    /// Start with vCPUs stopped (`-S`).
    pub paused: bool,
    /// Appended verbatim.
    pub extra_args: Vec<String>,
}

impl LaunchSpec {
    /// A running VM with `memory_bytes` of RAM, one vCPU and `image`.
    pub fn new(name: &str, memory_bytes: u64, image: &str) -> LaunchSpec {
        LaunchSpec {
            name: name.to_string(),
            memory_bytes,
            vcpus: 1,
            image: image.to_string(),
            incoming: None,
            paused: false,
            extra_args: Vec::new(),
        }
    }

    /// Sets `-incoming`.
    pub fn incoming(mut self, uri: &str) -> LaunchSpec {
        self.incoming = Some(uri.to_string());
        self
    }

    /// Sets `-S`.
    pub fn paused(mut self, paused: bool) -> LaunchSpec {
        self.paused = paused;
        self
    }

    /// Appends arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> LaunchSpec {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(format_size(150 << 20), "150M");
        assert_eq!(format_size(2 << 30), "2G");
        assert_eq!(format_size(12 << 10), "12K");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn qemu_command_line() {
        std::env::set_var("MIGTEST_QEMU_ACCEL", "tcg");
        let b = Backend::qemu_at("qemu-system-x86_64", "none");
        let spec = LaunchSpec::new("target", 64 << 20, "sweep")
            .incoming("unix:")
            .paused(true);
        let spec = LaunchSpec {
            image: "none".into(),
            ..spec
        };
        let args = b.command_line(&spec, Path::new("/tmp/migtest-x")).unwrap();
        assert_eq!(
            args.join(" "),
            "-name target -m 64M -smp 1 -machine none -nodefaults -display none -accel tcg \
             -serial file:/tmp/migtest-x/serial.log \
             -qmp unix:/tmp/migtest-x/qmp.sock,server=on,wait=off \
             -qmp unix:/tmp/migtest-x/telemetry.sock,server=on,wait=off -S \
             -incoming unix:/tmp/migtest-x/mig.sock"
        );
    }

    #[test]
    fn qemu_guest_gets_the_patched_boot_sector() {
        let dir = crate::process::new_log_dir().unwrap();
        let b = Backend::qemu_at("qemu-system-x86_64", "pc");
        let spec = LaunchSpec::new("source", 150 << 20, "sweep");
        let args = b.command_line(&spec, dir.path()).unwrap().join(" ");
        let img = dir.path().join("a-b-bootblock.img");
        assert!(
            args.contains(&format!(
                "-drive if=none,id=d0,file={},format=raw -device ide-hd,drive=d0,secs=1,cyls=1,heads=1",
                img.display()
            )),
            "{args}"
        );
        let bytes = std::fs::read(&img).unwrap();
        assert_eq!(bytes.len(), 512);
        let end = u32::from_le_bytes(
            bytes[qemu::END_OFFSET..qemu::END_OFFSET + 4]
                .try_into()
                .unwrap(),
        );
        assert_eq!(u64::from(end), 100 << 20);
    }

    #[test]
    fn builtin_command_line() {
        let spec = LaunchSpec::new("source", 1 << 30, "sweep").args(["-x"]);
        let args = Backend::Builtin
            .command_line(&spec, Path::new("/tmp/d"))
            .unwrap();
        let line = args.join(" ");
        assert!(
            line.starts_with("-name source -m 1G -smp 1 -kernel "),
            "{line}"
        );
        assert!(line.contains("guest-images/sweep.toml -nodefaults -display none -accel tcg -serial file:/tmp/d/serial.log -qmp unix:/tmp/d/qmp.sock,server=on,wait=off -qmp unix:/tmp/d/telemetry.sock,server=on,wait=off -x"), "{line}");
    }
}
