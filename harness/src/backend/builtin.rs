//! Finding the builtin VMM (`migtest-vmm`) and its guest images.

use std::path::{Path, PathBuf};

/// The builtin VMM's binary name.
pub const VMM_NAME: &str = "migtest-vmm";

/// The harness binary, which runs the VMM as `migtest vmm ARGS`.
pub const CARRIER_NAME: &str = "migtest";

/// Leading arguments needed before the VMM options when `binary` is the
/// `migtest` binary rather than `migtest-vmm`.
pub fn vmm_prefix_args(binary: &Path) -> Vec<String> {
    if binary.file_name().is_some_and(|n| n == CARRIER_NAME) {
        vec!["vmm".to_string()]
    } else {
        Vec::new()
    }
}

/// The `migtest-vmm` binary: env `MIGTEST_VMM`, else next to the current
/// executable (its directory, or the parent when running from
/// `target/*/deps`, as test binaries do).
pub fn vmm_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("MIGTEST_VMM") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        anyhow::bail!("MIGTEST_VMM={} is not a file", p.display());
    }
    let exe = std::env::current_exe()?;
    let candidates = candidates_near(&exe);
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    // The `migtest` binary carries the VMM itself (`migtest vmm ...`), so
    // `cargo run -p migtest` works without building migtest-vmm separately.
    if exe.file_name().is_some_and(|n| n == CARRIER_NAME) {
        return Ok(exe);
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
    fn image_paths() {
        assert!(image_path("sweep").ends_with("guest-images/sweep.toml"));
        assert_eq!(image_path("/x/y.toml"), PathBuf::from("/x/y.toml"));
    }
}
