//! Finding the builtin VMM (`migtest-vmm`) and its guest images.

use std::path::{Path, PathBuf};

/// The builtin VMM's binary name.
pub const VMM_NAME: &str = "migtest-vmm";

/// The harness CLI, which also carries the VMM as `migtest vmm ARGS...`.
pub const CLI_NAME: &str = "migtest";

/// How to start the builtin VMM: a program and the arguments that go before
/// the QEMU-style ones (`["vmm"]` when the `migtest` CLI runs itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmCommand {
    /// The executable.
    pub program: PathBuf,
    /// Leading arguments.
    pub prefix: Vec<String>,
}

/// Finds the builtin VMM, in this order:
///
/// 1. env `MIGTEST_VMM`;
/// 2. `migtest-vmm` next to the current executable (its directory, or the
///    parent when running from `target/*/deps`, as test binaries do);
/// 3. the current executable itself with `vmm` when it is the `migtest`
///    CLI (which carries the VMM);
/// 4. otherwise an error saying how to build it.
pub fn vmm_command() -> anyhow::Result<VmmCommand> {
    let exe = std::env::current_exe()?;
    vmm_command_for(&exe, std::env::var_os("MIGTEST_VMM").map(PathBuf::from))
}

fn vmm_command_for(exe: &Path, env: Option<PathBuf>) -> anyhow::Result<VmmCommand> {
    let plain = |program: PathBuf| VmmCommand {
        program,
        prefix: Vec::new(),
    };
    if let Some(p) = env {
        if p.is_file() {
            return Ok(plain(p));
        }
        anyhow::bail!("MIGTEST_VMM={} is not a file", p.display());
    }
    let candidates = candidates_near(exe);
    if let Some(c) = candidates.iter().find(|c| c.is_file()) {
        return Ok(plain(c.clone()));
    }
    if exe.file_name().is_some_and(|n| n == CLI_NAME) {
        return Ok(VmmCommand {
            program: exe.to_path_buf(),
            prefix: vec!["vmm".into()],
        });
    }
    anyhow::bail!(
        "cannot find {VMM_NAME} (looked at {}); build it with `cargo build -p migtest-vmm` \
         or set MIGTEST_VMM",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The builtin VMM's executable (see [`vmm_command`]).
pub fn vmm_binary() -> anyhow::Result<PathBuf> {
    vmm_command().map(|c| c.program)
}

fn candidates_near(exe: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = exe.parent() {
        out.push(dir.join(VMM_NAME));
        if dir.file_name().is_some_and(|n| n == "deps") {
            if let Some(up) = dir.parent() {
                out.push(up.join(VMM_NAME));
            }
        }
    }
    out
}

/// The guest-images directory: env `MIGTEST_IMAGES`, else the workspace's
/// `guest-images/`.
pub fn images_dir() -> PathBuf {
    std::env::var_os("MIGTEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images"))
}

/// `images_dir()/NAME.toml`; a name containing `/` or ending in `.toml` is
/// taken as a path.
pub fn image_path(name: &str) -> PathBuf {
    if name.contains('/') || name.ends_with(".toml") {
        PathBuf::from(name)
    } else {
        images_dir().join(format!("{name}.toml"))
    }
}

/// The range the builtin guest image's main workload writes, as
/// `migtest-vmm` lays it out for `memory_bytes` of RAM.
pub fn test_range(image: &str, memory_bytes: u64) -> anyhow::Result<(u64, u64)> {
    let path = image_path(image);
    let img = migtest_vmm::guest::image::GuestImage::load(&path)
        .map_err(|e| anyhow::anyhow!("guest image {}: {e}", path.display()))?;
    Ok(img.test_range(memory_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deps_dir_looks_one_up() {
        let c = candidates_near(Path::new("/t/target/debug/deps/migtest-abc"));
        assert_eq!(
            c,
            vec![
                PathBuf::from("/t/target/debug/deps/migtest-vmm"),
                PathBuf::from("/t/target/debug/migtest-vmm")
            ]
        );
        let c = candidates_near(Path::new("/t/target/debug/migtest"));
        assert_eq!(c, vec![PathBuf::from("/t/target/debug/migtest-vmm")]);
    }

    #[test]
    fn sweep_test_range() {
        assert_eq!(
            test_range("sweep", 128 << 20).unwrap(),
            (1 << 20, 100 << 20)
        );
        assert!(test_range("no-such-image", 128 << 20).is_err());
    }

    #[test]
    fn lookup_order() {
        let dir = crate::process::new_log_dir().unwrap();
        let d = dir.path();
        let exe = d.join("migtest");
        std::fs::write(&exe, "").unwrap();
        // Nothing next to it: the CLI runs itself.
        let c = vmm_command_for(&exe, None).unwrap();
        assert_eq!(
            (c.program, c.prefix),
            (exe.clone(), vec!["vmm".to_string()])
        );
        // Another binary cannot.
        let other = d.join("some-test");
        let e = vmm_command_for(&other, None).unwrap_err().to_string();
        assert!(e.contains("cargo build -p migtest-vmm"), "{e}");
        // migtest-vmm next to it wins over self.
        std::fs::write(d.join(VMM_NAME), "").unwrap();
        let c = vmm_command_for(&exe, None).unwrap();
        assert_eq!(c.program, d.join(VMM_NAME));
        assert!(c.prefix.is_empty());
        // The environment wins over everything, and must name a file.
        let c = vmm_command_for(&exe, Some(exe.clone())).unwrap();
        assert_eq!(c.program, exe);
        assert!(vmm_command_for(&exe, Some(d.join("nope"))).is_err());
    }

    #[test]
    fn image_paths() {
        assert!(image_path("sweep").ends_with("guest-images/sweep.toml"));
        assert_eq!(image_path("/x/y.toml"), PathBuf::from("/x/y.toml"));
    }
}
