//! Replays every input kept under `fixtures/fuzz-regressions/<target>/`
//! (crashes `cargo fuzz` found, fixed at their cause) through the same
//! check the fuzz target runs (`migtest_vmm::fuzzing`), plus the fixtures
//! the seed corpora start from. The `scenario_file` target's inputs are
//! replayed by `harness/tests/fuzz_regressions.rs`.

use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// Runs `check` on every file of `dir` (with `ext`, or any but README.md),
/// naming the file when it panics; returns how many it ran.
fn replay(dir: &Path, ext: Option<&str>, check: fn(&[u8])) -> usize {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| match ext {
            Some(ext) => p.extension().is_some_and(|e| e == ext),
            None => p.file_name().is_some_and(|n| n != "README.md"),
        })
        .collect();
    paths.sort();
    for path in &paths {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{}: check failed: {msg}", path.display());
        }
    }
    paths.len()
}

fn regressions(target: &str, check: fn(&[u8])) -> usize {
    replay(
        &fixtures().join("fuzz-regressions").join(target),
        None,
        check,
    )
}

#[test]
fn stream_decoder_regressions() {
    regressions("stream_decoder", migtest_vmm::fuzzing::check_stream);
}

#[test]
fn stream_decoder_fixture_streams() {
    let n = replay(
        &fixtures().join("streams"),
        Some("bin"),
        migtest_vmm::fuzzing::check_stream,
    );
    assert!(n >= 30, "only {n} streams in fixtures/streams");
}

#[test]
fn qmp_server_regressions() {
    regressions("qmp_server", migtest_vmm::fuzzing::check_qmp_server_input);
}

#[test]
fn guest_image_regressions() {
    regressions("guest_image", migtest_vmm::fuzzing::check_guest_image);
}

#[test]
fn guest_image_shipped_images() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images");
    let n = replay(&dir, Some("toml"), migtest_vmm::fuzzing::check_guest_image);
    assert!(n >= 5, "only {n} images in guest-images");
}

#[test]
fn multifd_channel_regressions() {
    regressions(
        "multifd_channel",
        migtest_vmm::fuzzing::check_multifd_channel,
    );
}

/// A valid page channel of the fixture geometry (4 pages, image 0x5eed).
fn multifd_channel_sample() -> Vec<u8> {
    use migtest_vmm::migration::multifd::Hello;
    use migtest_vmm::migration::stream::{StreamWriter, ZERO_ENTRY};
    let hello = Hello {
        channel: 1,
        channels: 2,
        uuid: [3; 16],
    };
    let mut w = StreamWriter::new(hello.to_bytes().to_vec());
    let page = |b: u8| vec![b; 4096];
    w.pass(1).unwrap();
    w.pages(&[0, 2 | ZERO_ENTRY], &page(7)).unwrap();
    w.pass(2).unwrap();
    w.pages(&[2, 3], &[page(1), page(2)].concat()).unwrap();
    w.end().unwrap();
    w.into_inner()
}

#[test]
fn multifd_channel_sample_prefixes_and_flips() {
    use migtest_vmm::fuzzing::check_multifd_channel as check;
    let good = multifd_channel_sample();
    check(&good);
    // Every truncation, and a flipped byte in each field of the hello and
    // the records' heads (the checks panic on a broken invariant).
    for n in (0..good.len()).step_by(7) {
        check(&good[..n]);
    }
    for i in (0..120).chain(good.len() - 20..good.len()) {
        let mut bad = good.clone();
        bad[i] ^= 0x41;
        check(&bad);
    }
    let mut long = good.clone();
    long.push(0);
    check(&long);
}
