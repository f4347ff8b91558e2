//! Helpers shared by the `guest_*` integration tests.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use migtest_vmm::guest::{
    Guest, GuestConfig, GuestImage, GuestRam, SerialConfig, WriteObserver, PAGE_SIZE,
};

pub const MIB: u64 = 1 << 20;

/// Path of a file in the repository's `guest-images/`.
pub fn image_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-images")
        .join(name)
}

/// Loads `guest-images/<name>.toml`.
pub fn image(name: &str) -> GuestImage {
    GuestImage::load(image_path(&format!("{name}.toml"))).expect("image loads")
}

pub fn config(image: GuestImage, ram_size: u64, vcpus: u32, serial: SerialConfig) -> GuestConfig {
    GuestConfig {
        ram_size,
        vcpus,
        backing: Default::default(),
        image,
        serial,
    }
}

/// Records every page written, independently of the dirty bitmap.
#[derive(Default)]
pub struct WriteLog(Mutex<BTreeSet<u64>>);

impl WriteObserver for WriteLog {
    fn on_write(&self, first_page: u64, count: u64) {
        self.0
            .lock()
            .unwrap()
            .extend(first_page..first_page + count);
    }
}

impl WriteLog {
    pub fn take(&self) -> BTreeSet<u64> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// Whether any logged page satisfies `pred` (the log is kept).
    pub fn any(&self, pred: impl Fn(u64) -> bool) -> bool {
        self.0.lock().unwrap().iter().any(|&p| pred(p))
    }
}

pub fn new_logged(config: GuestConfig) -> (Guest, Arc<WriteLog>) {
    let log = Arc::new(WriteLog::default());
    let guest = Guest::with_write_observer(config, log.clone()).expect("guest starts");
    (guest, log)
}

/// Polls the serial file until it holds at least `count` bytes equal to
/// `byte`; panics after `timeout`.
pub fn wait_for_serial(path: &Path, byte: u8, count: usize, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = std::fs::read(path).unwrap_or_default();
        if out.iter().filter(|&&b| b == byte).count() >= count {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {count} x {:?} on serial, have {:?}",
            byte as char,
            String::from_utf8_lossy(&out)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Copies every non-zero page of `src` into `dst` (which starts zeroed).
pub fn copy_ram(src: &GuestRam, dst: &GuestRam) {
    let mut buf = [0u8; PAGE_SIZE];
    for page in 0..src.page_count() {
        if !src.page_is_zero(page) {
            src.read_page(page, &mut buf).unwrap();
            dst.load_page(page, &buf).unwrap();
        }
    }
}

/// Copies the given pages from `src` to `dst`, as a migration round does.
pub fn copy_pages(src: &GuestRam, dst: &GuestRam, pages: impl Iterator<Item = u64>) -> u64 {
    let mut buf = [0u8; PAGE_SIZE];
    let mut n = 0;
    for page in pages {
        if src.page_is_zero(page) {
            dst.zero_page(page).unwrap();
        } else {
            src.read_page(page, &mut buf).unwrap();
            dst.load_page(page, &buf).unwrap();
        }
        n += 1;
    }
    n
}
