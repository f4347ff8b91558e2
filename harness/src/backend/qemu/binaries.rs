//! Which QEMU binaries to run: `--qemu*` options, `MIGTEST_QEMU`,
//! `QTEST_QEMU_BINARY*` and `PATH`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use super::*;

/// Name searched for in `PATH` when nothing else is configured.
pub const DEFAULT_QEMU_BINARY: &str = "qemu-system-x86_64";
/// Environment variable: binary for both sides (migtest's own name).
pub const ENV_MIGTEST_QEMU: &str = "MIGTEST_QEMU";
/// Environment variable: binary for both sides (QEMU qtest's name).
pub const ENV_QTEST_QEMU_BINARY: &str = "QTEST_QEMU_BINARY";
/// Environment variable: source binary (QEMU qtest's name).
pub const ENV_QTEST_QEMU_BINARY_SRC: &str = "QTEST_QEMU_BINARY_SRC";
/// Environment variable: destination binary (QEMU qtest's name).
pub const ENV_QTEST_QEMU_BINARY_DST: &str = "QTEST_QEMU_BINARY_DST";
/// Environment variable: machine type override (QEMU qtest's name).
pub const ENV_QTEST_QEMU_MACHINE_TYPE: &str = "QTEST_QEMU_MACHINE_TYPE";
/// Environment variable: accelerator choice, `tcg` (default), `auto` or `kvm`.
pub const ENV_MIGTEST_QEMU_ACCEL: &str = "MIGTEST_QEMU_ACCEL";

/// Command-line options selecting QEMU binaries; flatten into the harness CLI
/// with `#[command(flatten)]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct QemuBinaryArgs {
    /// QEMU binary for both migration sides.
    #[arg(long = "qemu", value_name = "PATH")]
    pub qemu: Option<PathBuf>,
    /// QEMU binary for the migration source (overrides --qemu).
    #[arg(long = "qemu-src", value_name = "PATH")]
    pub qemu_src: Option<PathBuf>,
    /// QEMU binary for the migration destination (overrides --qemu).
    #[arg(long = "qemu-dst", value_name = "PATH")]
    pub qemu_dst: Option<PathBuf>,
}

/// The resolved pair of binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuBinaries {
    /// Binary for the migration source.
    pub src: PathBuf,
    /// Binary for the migration destination.
    pub dst: PathBuf,
}

impl QemuBinaries {
    /// Whether source and destination run the same binary.
    pub fn same(&self) -> bool {
        self.src == self.dst
    }
}

/// Resolve the source and destination binaries from the process's real
/// environment and `PATH`. See [`resolve_binaries_with`] for the order.
pub fn resolve_binaries(args: &QemuBinaryArgs) -> Result<QemuBinaries, QemuError> {
    let path = std::env::var_os("PATH");
    resolve_binaries_with(args, &|k| std::env::var_os(k), path.as_deref())
}

/// Resolve the binaries with an injectable environment.
///
/// Order for each side (first hit wins; the command line beats the
/// environment, and the side-specific option beats the shared one within
/// each):
///
/// 1. `--qemu-src` / `--qemu-dst`
/// 2. `--qemu`
/// 3. `QTEST_QEMU_BINARY_SRC` / `QTEST_QEMU_BINARY_DST`
/// 4. `MIGTEST_QEMU`
/// 5. `QTEST_QEMU_BINARY`
/// 6. `qemu-system-x86_64` searched in `path_var`
///
/// Empty values count as unset. A value without a `/` is looked up in
/// `path_var`; any resolved path must be an executable regular file.
pub fn resolve_binaries_with(
    args: &QemuBinaryArgs,
    env: &dyn Fn(&str) -> Option<OsString>,
    path_var: Option<&OsStr>,
) -> Result<QemuBinaries, QemuError> {
    let src = resolve_side(Side::Source, args, env, path_var)?;
    let dst = resolve_side(Side::Destination, args, env, path_var)?;
    Ok(QemuBinaries { src, dst })
}

fn resolve_side(
    side: Side,
    args: &QemuBinaryArgs,
    env: &dyn Fn(&str) -> Option<OsString>,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, QemuError> {
    let (side_arg, side_arg_name, side_env) = match side {
        Side::Source => (&args.qemu_src, "--qemu-src", ENV_QTEST_QEMU_BINARY_SRC),
        Side::Destination => (&args.qemu_dst, "--qemu-dst", ENV_QTEST_QEMU_BINARY_DST),
    };
    let nonempty = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
    let from_env = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);

    let candidates: [(Option<PathBuf>, &str); 5] = [
        (nonempty(side_arg), side_arg_name),
        (nonempty(&args.qemu), "--qemu"),
        (from_env(side_env), side_env),
        (from_env(ENV_MIGTEST_QEMU), ENV_MIGTEST_QEMU),
        (from_env(ENV_QTEST_QEMU_BINARY), ENV_QTEST_QEMU_BINARY),
    ];
    for (cand, origin) in candidates {
        if let Some(p) = cand {
            return check_binary(&p, origin, path_var);
        }
    }
    find_in_path(DEFAULT_QEMU_BINARY, path_var).ok_or(QemuError::NoBinary {
        side,
        side_upper: match side {
            Side::Source => "SRC",
            Side::Destination => "DST",
        },
        default: DEFAULT_QEMU_BINARY,
    })
}

fn check_binary(p: &Path, origin: &str, path_var: Option<&OsStr>) -> Result<PathBuf, QemuError> {
    let bad = || QemuError::BadBinary {
        path: p.to_path_buf(),
        origin: origin.to_string(),
    };
    if p.components().count() == 1 && !p.is_absolute() {
        // A bare name: search PATH like a shell would.
        let name = p.to_str().ok_or_else(bad)?;
        return find_in_path(name, path_var).ok_or_else(bad);
    }
    if is_executable_file(p) {
        Ok(p.to_path_buf())
    } else {
        Err(bad())
    }
}

/// Search `path_var` (a `PATH`-style list) for an executable regular file
/// called `name`.
pub fn find_in_path(name: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    let path_var = path_var?;
    std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|cand| is_executable_file(cand))
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(p) {
        Ok(m) => m.is_file() && m.permissions().mode() & 0o111 != 0,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).map(OsString::from)
    }

    fn fake_bin(dir: &Path, name: &str, exec: bool) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        let mode = if exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn binary_precedence() {
        let d = tempfile::tempdir().unwrap();
        let a = fake_bin(d.path(), "a", true);
        let b = fake_bin(d.path(), "b", true);
        let c = fake_bin(d.path(), "c", true);
        let e = fake_bin(d.path(), "e", true);
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let (sa, sb, sc, se) = (s(&a), s(&b), s(&c), s(&e));

        // env only: QTEST_QEMU_BINARY
        let r = resolve_binaries_with(
            &QemuBinaryArgs::default(),
            &env_of(&[("QTEST_QEMU_BINARY", &sa)]),
            None,
        )
        .unwrap();
        assert_eq!(
            r,
            QemuBinaries {
                src: a.clone(),
                dst: a.clone()
            }
        );
        assert!(r.same());
        // MIGTEST_QEMU beats QTEST_QEMU_BINARY
        let env = env_of(&[("QTEST_QEMU_BINARY", &sa), ("MIGTEST_QEMU", &sb)]);
        let r = resolve_binaries_with(&QemuBinaryArgs::default(), &env, None).unwrap();
        assert_eq!(r.src, b);
        // side-specific env beats both
        let env = env_of(&[
            ("QTEST_QEMU_BINARY", &sa),
            ("MIGTEST_QEMU", &sb),
            ("QTEST_QEMU_BINARY_DST", &sc),
        ]);
        let r = resolve_binaries_with(&QemuBinaryArgs::default(), &env, None).unwrap();
        assert_eq!((r.src.clone(), r.dst.clone()), (b.clone(), c.clone()));
        assert!(!r.same());
        // --qemu beats all env
        let args = QemuBinaryArgs {
            qemu: Some(e.clone()),
            ..Default::default()
        };
        let r = resolve_binaries_with(&args, &env, None).unwrap();
        assert_eq!((r.src, r.dst), (e.clone(), e.clone()));
        // --qemu-src beats --qemu
        let args = QemuBinaryArgs {
            qemu: Some(e.clone()),
            qemu_src: Some(a.clone()),
            qemu_dst: None,
        };
        let r = resolve_binaries_with(&args, &env, None).unwrap();
        assert_eq!((r.src, r.dst), (a.clone(), e.clone()));
        // empty values are unset
        let env = env_of(&[("MIGTEST_QEMU", ""), ("QTEST_QEMU_BINARY", &se)]);
        let r = resolve_binaries_with(&QemuBinaryArgs::default(), &env, None).unwrap();
        assert_eq!(r.src, e);
    }

    #[test]
    fn binary_path_search_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let q = fake_bin(d.path(), DEFAULT_QEMU_BINARY, true);
        fake_bin(d.path(), "noexec", false);
        let path = std::env::join_paths(["/nonexistent-dir", d.path().to_str().unwrap()]).unwrap();
        let none = env_of(&[]);
        // last resort: PATH
        let r = resolve_binaries_with(&QemuBinaryArgs::default(), &none, Some(&path)).unwrap();
        assert_eq!(r.src, q);
        // bare name in env is searched in PATH
        let env = env_of(&[("MIGTEST_QEMU", DEFAULT_QEMU_BINARY)]);
        let r = resolve_binaries_with(&QemuBinaryArgs::default(), &env, Some(&path)).unwrap();
        assert_eq!(r.dst, q);
        // nothing anywhere
        let err = resolve_binaries_with(
            &QemuBinaryArgs::default(),
            &none,
            Some(OsStr::new("/nonexistent-dir")),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                QemuError::NoBinary {
                    side: Side::Source,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains("--qemu")
                && msg.contains("QTEST_QEMU_BINARY")
                && msg.contains("MIGTEST_QEMU"),
            "{msg}"
        );
        assert!(msg.contains("qemu-system-x86_64"), "{msg}");
        // configured but not executable / missing: no silent fallback to PATH
        let args = QemuBinaryArgs {
            qemu: Some(d.path().join("noexec")),
            ..Default::default()
        };
        let err = resolve_binaries_with(&args, &none, Some(&path)).unwrap_err();
        assert!(
            matches!(&err, QemuError::BadBinary { origin, .. } if origin == "--qemu"),
            "{err}"
        );
        let env = env_of(&[("QTEST_QEMU_BINARY_SRC", "/no/such/qemu")]);
        let err = resolve_binaries_with(&QemuBinaryArgs::default(), &env, Some(&path)).unwrap_err();
        assert!(
            matches!(&err, QemuError::BadBinary { origin, .. } if origin == "QTEST_QEMU_BINARY_SRC"),
            "{err}"
        );
        // a directory is not a binary
        let args = QemuBinaryArgs {
            qemu_dst: Some(d.path().to_path_buf()),
            ..Default::default()
        };
        assert!(resolve_binaries_with(&args, &none, Some(&path)).is_err());
    }

    #[test]
    fn binary_args_parse_with_clap() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            q: QemuBinaryArgs,
        }
        let c = Cli::try_parse_from(["x", "--qemu", "/a", "--qemu-dst", "/b"]).unwrap();
        assert_eq!(c.q.qemu.as_deref(), Some(Path::new("/a")));
        assert_eq!(c.q.qemu_src, None);
        assert_eq!(c.q.qemu_dst.as_deref(), Some(Path::new("/b")));
    }
}
