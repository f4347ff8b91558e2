//! Writes the seed corpora of the `cargo fuzz` targets (`fuzz/`) from the
//! project's fixtures, so every seed is an input the project really meets:
//!
//! - `stream_decoder`: `fixtures/streams/*.bin` (the hand-damaged streams)
//!   and streams recorded here from real migrations: for every guest of
//!   `migtest_vmm::fuzzing::stream::STREAM_GUESTS` a source `migtest-vmm`
//!   migrates (running, so several passes, and paused, one pass) into a unix
//!   socket this program reads to its end;
//! - `qmp_server`: the client side of every `fixtures/qemu-7.2/*.json`
//!   transcript (sent messages and raw bytes), once as recorded and once
//!   after `qmp_capabilities`;
//! - `scenario_file`: `scenarios/*.toml` and each one written as JSON;
//! - `guest_image`: `guest-images/*.toml`.
//!
//! `cargo run -p migtest --example seed_corpora -- CORPUS_DIR` (run by
//! `fuzz/seed-corpora`; needs `migtest-vmm` built, or `MIGTEST_VMM`).

use anyhow::{bail, Context};
use migtest::backend::{Backend, LaunchSpec};
use migtest::scenario::Scenario;
use migtest::vm::Vm;
use migtest_qmp::schema::MigrationStatus;
use migtest_vmm::fuzzing::stream::STREAM_GUESTS;
use serde_json::Value;
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    let Some(out) = std::env::args().nth(1).map(PathBuf::from) else {
        bail!("usage: seed_corpora CORPUS_DIR");
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let streams = Corpus::new(&out, "stream_decoder")?;
    for (name, bytes) in files(&root.join("fixtures/streams"), "bin")? {
        streams.put(&name, &bytes)?;
    }
    for guest in STREAM_GUESTS {
        for live in [true, false] {
            let bytes = record(guest.image, guest.ram_size, guest.vcpus, live)
                .with_context(|| format!("recording a stream from `{}`", guest.image))?;
            let mode = if live { "live" } else { "paused" };
            streams.put(&format!("recorded-{}-{mode}.bin", guest.image), &bytes)?;
        }
    }
    let qmp = Corpus::new(&out, "qmp_server")?;
    for (name, bytes) in files(&root.join("fixtures/qemu-7.2"), "json")? {
        let sent = client_bytes(&bytes).with_context(|| format!("fixtures/qemu-7.2/{name}"))?;
        qmp.put(&name, &sent)?;
        let mut negotiated = b"{\"execute\": \"qmp_capabilities\"}\n".to_vec();
        negotiated.extend_from_slice(&sent);
        qmp.put(&format!("negotiated-{name}"), &negotiated)?;
    }
    let scenarios = Corpus::new(&out, "scenario_file")?;
    for (name, bytes) in files(&root.join("scenarios"), "toml")? {
        if name == "Cargo.toml" {
            continue;
        }
        let text = String::from_utf8(bytes).with_context(|| format!("scenarios/{name}"))?;
        let scenario =
            Scenario::from_toml_str(&text).with_context(|| format!("scenarios/{name}"))?;
        scenarios.put(&name, text.as_bytes())?;
        scenarios.put(
            &format!("{name}.json"),
            scenario.to_json_string()?.as_bytes(),
        )?;
    }
    let images = Corpus::new(&out, "guest_image")?;
    for (name, bytes) in files(&root.join("guest-images"), "toml")? {
        images.put(&name, &bytes)?;
    }
    for c in [streams, qmp, scenarios, images] {
        println!(
            "seed_corpora: {}: {} inputs",
            c.dir.display(),
            c.count.get()
        );
    }
    Ok(())
}

/// One target's corpus directory.
struct Corpus {
    dir: PathBuf,
    count: std::cell::Cell<usize>,
}

impl Corpus {
    fn new(out: &Path, target: &str) -> anyhow::Result<Corpus> {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Corpus {
            dir,
            count: Default::default(),
        })
    }

    fn put(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.dir.join(format!("seed-{name}"));
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        self.count.set(self.count.get() + 1);
        Ok(())
    }
}

/// `(file name, contents)` of the files in `dir` ending in `.ext`, sorted.
fn files(dir: &Path, ext: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == ext) && path.is_file() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, std::fs::read(&path)?));
        }
    }
    out.sort();
    Ok(out)
}

/// What the client sent in a recorded transcript: each `send` as one JSON
/// line, each `send_raw` as its bytes (summarised sends are left out).
fn client_bytes(fixture: &[u8]) -> anyhow::Result<Vec<u8>> {
    let doc: Value = serde_json::from_slice(fixture)?;
    let mut out = Vec::new();
    for step in doc["transcript"].as_array().into_iter().flatten() {
        if let Some(msg) = step.get("send") {
            out.extend_from_slice(serde_json::to_string(msg)?.as_bytes());
            out.push(b'\n');
        } else if let Some(Value::String(raw)) = step.get("send_raw") {
            out.extend_from_slice(raw.as_bytes());
        }
    }
    Ok(out)
}

/// One migration from a fresh source into a socket read to its end.
fn record(image: &str, ram: u64, vcpus: u32, live: bool) -> anyhow::Result<Vec<u8>> {
    let mut spec = LaunchSpec::new("source", ram, image);
    spec.vcpus = vcpus;
    let src = Vm::launch(&Backend::Builtin, &spec)?;
    if !live {
        src.stop()?;
    }
    let dir = tempfile::Builder::new().prefix("migtest-seed-").tempdir()?;
    let sock = dir.path().join("stream.sock");
    let listener = UnixListener::bind(&sock)?;
    let reader = std::thread::spawn(move || read_all(&listener));
    src.migrate(&format!("unix:{}", sock.display()))?;
    src.wait_for_status(MigrationStatus::Completed, DEADLINE)?;
    let bytes = reader.join().expect("reader thread")?;
    src.quit()?;
    Ok(bytes)
}

fn read_all(listener: &UnixListener) -> anyhow::Result<Vec<u8>> {
    let (mut conn, _) = listener.accept()?;
    conn.set_read_timeout(Some(DEADLINE))?;
    let mut bytes = Vec::new();
    conn.read_to_end(&mut bytes)
        .context("reading the migration stream")?;
    Ok(bytes)
}
