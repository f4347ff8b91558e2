//! One QEMU command line ([`QemuLaunch`]): machine, accel, QMP socket,
//! serial, the boot image, `-incoming`, `-S` and extra options.

use std::path::{Path, PathBuf};

use super::*;

/// Maximum unix socket path length (`sizeof(sun_path) - 1` on Linux).
pub const UNIX_PATH_MAX: usize = 107;

/// Everything needed to build one QEMU command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuLaunch {
    /// The QEMU binary (not part of [`QemuLaunch::args`]).
    pub binary: PathBuf,
    /// Machine type, e.g. `pc-i440fx-7.2`.
    pub machine: String,
    /// Guest RAM in MiB (`-m NM`).
    pub memory_mib: u64,
    /// vCPUs (`-smp N`).
    pub smp: u32,
    /// QMP unix socket path; QEMU listens (`server=on,wait=off`).
    pub qmp_socket: PathBuf,
    /// Serial (COM1) output file.
    pub serial_path: PathBuf,
    /// Writable raw boot image (QEMU 7.2 refuses a read-only node for
    /// `ide-hd`: "Block node is read-only").
    pub boot_image: PathBuf,
    /// `-incoming URI` (e.g. `unix:/path`, `tcp:127.0.0.1:4444`, `defer`).
    pub incoming: Option<String>,
    /// Start with the vCPUs stopped (`-S`).
    pub paused: bool,
    /// Guest name (`-name`).
    pub name: String,
    /// Accelerator selection.
    pub accel: Accel,
    /// Extra arguments appended verbatim at the end.
    pub extra_args: Vec<String>,
}

impl QemuLaunch {
    /// A launch with defaults: 150 MiB, 1 vCPU, not paused, no incoming,
    /// [`Accel::Auto`], no extra args.
    pub fn new(
        binary: impl Into<PathBuf>,
        machine: impl Into<String>,
        name: impl Into<String>,
        qmp_socket: impl Into<PathBuf>,
        serial_path: impl Into<PathBuf>,
        boot_image: impl Into<PathBuf>,
    ) -> Self {
        QemuLaunch {
            binary: binary.into(),
            machine: machine.into(),
            memory_mib: 150,
            smp: 1,
            qmp_socket: qmp_socket.into(),
            serial_path: serial_path.into(),
            boot_image: boot_image.into(),
            incoming: None,
            paused: false,
            name: name.into(),
            accel: Accel::Auto,
            extra_args: Vec::new(),
        }
    }

    /// The argument vector (without the binary), probing `/dev/kvm` for
    /// [`Accel::Auto`].
    pub fn args(&self) -> Result<Vec<String>, QemuError> {
        self.args_with_kvm(kvm_usable())
    }

    /// The argument vector given whether KVM is usable:
    ///
    /// `-accel kvm -accel tcg -machine M -name N -m XM -smp S -nodefaults
    /// -display none -serial file:P -qmp unix:Q,server=on,wait=off
    /// -drive if=none,id=d0,file=IMG,format=raw
    /// -device ide-hd,drive=d0,secs=1,cyls=1,heads=1 [-incoming URI] [-S] extra...`
    ///
    /// Commas inside option-list values (`-name`, the QMP path, the drive
    /// file) are doubled as QEMU's option parser requires; `-serial file:`
    /// takes the rest of the string verbatim.
    pub fn args_with_kvm(&self, kvm_usable: bool) -> Result<Vec<String>, QemuError> {
        let sock = path_str(&self.qmp_socket)?;
        if sock.len() > UNIX_PATH_MAX {
            return Err(QemuError::SocketPathTooLong {
                path: self.qmp_socket.clone(),
                len: sock.len(),
                max: UNIX_PATH_MAX,
            });
        }
        let serial = path_str(&self.serial_path)?;
        let image = path_str(&self.boot_image)?;

        let mut a = self.accel.args(kvm_usable);
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&["-machine", &self.machine]);
        push(&["-name", &escape_commas(&self.name)]);
        push(&["-m", &format!("{}M", self.memory_mib)]);
        push(&["-smp", &self.smp.to_string()]);
        push(&["-nodefaults", "-display", "none"]);
        push(&["-serial", &format!("file:{serial}")]);
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", escape_commas(sock)),
        ]);
        push(&[
            "-drive",
            &format!("if=none,id=d0,file={},format=raw", escape_commas(image)),
        ]);
        push(&["-device", "ide-hd,drive=d0,secs=1,cyls=1,heads=1"]);
        if let Some(uri) = &self.incoming {
            push(&["-incoming", uri]);
        }
        if self.paused {
            push(&["-S"]);
        }
        a.extend(self.extra_args.iter().cloned());
        Ok(a)
    }

    /// A [`std::process::Command`] for this launch (stdio left as inherited).
    pub fn command(&self) -> Result<std::process::Command, QemuError> {
        let mut c = std::process::Command::new(&self.binary);
        c.args(self.args()?);
        Ok(c)
    }
}

fn path_str(p: &Path) -> Result<&str, QemuError> {
    p.to_str()
        .ok_or_else(|| QemuError::NonUtf8Path(p.to_path_buf()))
}

/// Double every comma, QEMU's escape inside `key=value,...` option lists.
pub fn escape_commas(s: &str) -> String {
    s.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch() -> QemuLaunch {
        QemuLaunch::new(
            "/usr/bin/qemu-system-x86_64",
            "pc-i440fx-7.2",
            "src",
            "/tmp/m/qmp.sock",
            "/tmp/m/serial",
            "/tmp/m/ab.img",
        )
    }

    #[test]
    fn command_line_kvm_and_tcg() {
        let l = launch();
        let args = l.args_with_kvm(true).unwrap();
        assert_eq!(
            args.join(" "),
            "-accel kvm -accel tcg -machine pc-i440fx-7.2 -name src -m 150M -smp 1 -nodefaults -display none \
             -serial file:/tmp/m/serial -qmp unix:/tmp/m/qmp.sock,server=on,wait=off \
             -drive if=none,id=d0,file=/tmp/m/ab.img,format=raw -device ide-hd,drive=d0,secs=1,cyls=1,heads=1"
        );
        let args = l.args_with_kvm(false).unwrap();
        assert_eq!(&args[..3], &["-accel", "tcg", "-machine"]);
        let mut l2 = l.clone();
        l2.accel = Accel::Tcg;
        assert_eq!(
            &l2.args_with_kvm(true).unwrap()[..3],
            &["-accel", "tcg", "-machine"]
        );
        l2.accel = Accel::Kvm;
        assert_eq!(
            &l2.args_with_kvm(false).unwrap()[..3],
            &["-accel", "kvm", "-machine"]
        );
    }

    #[test]
    fn command_line_incoming_paused_extra_escaping() {
        let mut l = launch();
        l.incoming = Some("unix:/tmp/m/mig.sock".into());
        l.paused = true;
        l.memory_mib = 256;
        l.smp = 2;
        l.name = "dst,debug-threads=on".into();
        l.qmp_socket = "/tmp/a,b/qmp".into();
        l.boot_image = "/tmp/a,b/img".into();
        l.extra_args = vec!["-trace".into(), "migration_*".into()];
        let args = l.args_with_kvm(false).unwrap();
        let s = args.join(" ");
        assert!(s.contains("-name dst,,debug-threads=on "), "{s}");
        assert!(s.contains("-m 256M -smp 2 "), "{s}");
        assert!(
            s.contains("-qmp unix:/tmp/a,,b/qmp,server=on,wait=off "),
            "{s}"
        );
        assert!(s.contains("file=/tmp/a,,b/img,format=raw "), "{s}");
        assert!(
            s.ends_with("-incoming unix:/tmp/m/mig.sock -S -trace migration_*"),
            "{s}"
        );
        let cmd = l.command().unwrap();
        assert_eq!(cmd.get_program(), "/usr/bin/qemu-system-x86_64");
    }

    #[test]
    fn command_line_rejects_long_socket_path() {
        let mut l = launch();
        l.qmp_socket = PathBuf::from(format!("/tmp/{}", "x".repeat(110)));
        assert!(matches!(
            l.args_with_kvm(false),
            Err(QemuError::SocketPathTooLong { .. })
        ));
    }
}
