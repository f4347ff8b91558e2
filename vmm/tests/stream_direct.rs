//! Page data read straight into guest RAM (`stream::FdInput` with a
//! `DirectPages` target) decodes every stream exactly as the buffered path
//! does: the same accepted streams give the same RAM, the same damaged
//! streams the same error, at the same offset.

use migtest_vmm::guest::GuestRam;
use migtest_vmm::migration::stream::{
    self, DirectPages, Expect, FdInput, Header, StreamSink, StreamWriter, VecSink, ZERO_ENTRY,
};
use migtest_vmm::migration::PAGE_SIZE;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

/// Guest RAM loaded the way the destination does: full pages in place,
/// zero pages, XBZRLE pages and fallback records through the sink.
struct DirectRam {
    ram: GuestRam,
    /// Pages handed out for reading in place.
    targets: std::cell::Cell<usize>,
}

impl StreamSink for DirectRam {
    fn zero_page(&mut self, page: u64) -> Result<(), String> {
        self.ram.zero_page(page).map_err(|e| e.to_string())
    }
    fn page(&mut self, page: u64, data: &[u8; PAGE_SIZE]) -> Result<(), String> {
        self.ram.load_page(page, data).map_err(|e| e.to_string())
    }
    fn xbzrle(&mut self, page: u64, encoded: &[u8]) -> Result<(), String> {
        let mut buf = [0u8; PAGE_SIZE];
        self.ram
            .read_page(page, &mut buf)
            .map_err(|e| e.to_string())?;
        migtest_vmm::migration::xbzrle::decode(encoded, &mut buf).map_err(|e| e.reason)?;
        self.page(page, &buf)
    }
    fn direct(&self) -> Option<&dyn DirectPages> {
        Some(self)
    }
}

impl DirectPages for DirectRam {
    fn page_target(&self, page: u64) -> Option<*mut u8> {
        self.targets.set(self.targets.get() + 1);
        self.ram.load_target(page).ok()
    }
}

fn ram_bytes(ram: &GuestRam) -> Vec<u8> {
    let mut out = vec![0u8; ram.size() as usize];
    ram.read_bytes(0, &mut out).unwrap();
    out
}

/// Loads `bytes` through a socket with pages in place, and from memory
/// through the batch buffer; both outcomes (error text, or RAM image), and
/// how many page targets the in-place load asked for.
fn both_ways(bytes: &[u8], expect: Expect) -> (String, String, usize) {
    let (mut tx, rx) = UnixStream::pair().unwrap();
    let owned = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        // The reader may stop early on a damaged stream.
        let _ = tx.write_all(&owned);
    });
    let mut direct = DirectRam {
        ram: GuestRam::new(expect.ram_size).unwrap(),
        targets: std::cell::Cell::new(0),
    };
    let d = stream::load(FdInput::new(rx), expect, &mut direct);
    writer.join().unwrap();
    let mut img = vec![0u8; expect.ram_size as usize];
    let b = stream::load(bytes, expect, &mut VecSink(&mut img));
    let show = |r: Result<stream::LoadSummary, stream::StreamError>, img: Vec<u8>| match r {
        Ok(s) => format!(
            "ok {} bytes, {} pages, {} zero; ram {:x}",
            s.bytes,
            s.pages,
            s.zero_pages,
            xxhash_rust::xxh3::xxh3_64(&img)
        ),
        Err(e) => format!("error: {e}"),
    };
    let targets = direct.targets.get();
    (show(d, ram_bytes(&direct.ram)), show(b, img), targets)
}

#[test]
fn every_fixture_decodes_the_same_in_place() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/streams");
    let expect = Expect {
        ram_size: 4 * PAGE_SIZE as u64,
        vcpus: 1,
        image_id: 0x5eed,
    };
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".bin") || name.contains("postcopy") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let (d, b, targets) = both_ways(&bytes, expect);
        assert_eq!(d, b, "{name}");
        if name == "good-batch.bin" {
            assert!(targets > 0, "good-batch.bin was not read in place");
        }
        n += 1;
    }
    assert!(n > 40, "only {n} fixtures");
}

const PAGES: u64 = 600;

fn expect() -> Expect {
    Expect {
        ram_size: PAGES * PAGE_SIZE as u64,
        vcpus: 1,
        image_id: 7,
    }
}

fn page_of(p: u64, round: u8) -> Vec<u8> {
    (0..PAGE_SIZE)
        .map(|i| (i as u64 * 31 + p * 7 + round as u64) as u8 | 1)
        .collect()
}

/// A stream of PAGES records of `batches` (page, zero?) lists.
fn pages_stream(batches: &[Vec<(u64, bool)>]) -> Vec<u8> {
    let mut w = StreamWriter::new(Vec::new());
    w.header(&Header::new(PAGES * PAGE_SIZE as u64, 1, 7))
        .unwrap();
    w.pass(1).unwrap();
    for (round, b) in batches.iter().enumerate() {
        let entries: Vec<u64> = b
            .iter()
            .map(|&(p, z)| if z { p | ZERO_ENTRY } else { p })
            .collect();
        let data: Vec<u8> = b
            .iter()
            .filter(|(_, z)| !z)
            .flat_map(|&(p, _)| page_of(p, round as u8))
            .collect();
        w.pages(&entries, &data).unwrap();
    }
    let dev = br#"{"runstate":"running","devices":{}}"#;
    w.device_state(dev).unwrap();
    w.end().unwrap();
    w.into_inner()
}

#[test]
fn large_records_and_out_of_order_ones_decode_the_same() {
    let increasing: Vec<(u64, bool)> = (0..300).map(|p| (p, p % 5 == 0)).collect();
    // A page twice in one record, zero after full and full after zero:
    // read through the batch buffer, in entry order.
    let repeats = vec![(9, false), (9, true), (4, true), (4, false), (3, false)];
    let wrapped: Vec<(u64, bool)> = (550..600).chain(0..40).map(|p| (p, false)).collect();
    let s = pages_stream(&[increasing.clone(), repeats, wrapped, increasing]);
    let (d, b, targets) = both_ways(&s, expect());
    assert!(d.starts_with("ok"), "{d}");
    assert_eq!(d, b);
    // Once per full page of the in-place records.
    assert_eq!(targets, 240 + 240, "only the increasing records in place");
}

#[test]
fn damaged_page_data_in_place_fails_with_the_precise_error() {
    let s = pages_stream(&[(0..256).map(|p| (p, false)).collect()]);
    let entries = 40 + 9 + 5;
    // The last entry's page 255 made 511: still increasing and in RAM, so
    // the data goes in place to the wrong page, and the digest at END
    // (which covers the entries) refuses the stream.
    let mut bad = s.clone();
    bad[entries + 255 * 8 + 6] ^= 0x01;
    let (d, b, _) = both_ways(&bad, expect());
    assert!(d.contains("digest"), "{d}");
    assert_eq!(d, b);
    // A flipped byte of page data is not the digest's (version 5): the
    // stream loads, with that byte changed, the same both ways.
    let mut flipped = s.clone();
    flipped[entries + 256 * 8 + 1000] ^= 0x40;
    let (d, b, _) = both_ways(&flipped, expect());
    let (good, _, _) = both_ways(&s, expect());
    assert!(d.starts_with("ok"), "{d}");
    assert_ne!(d, good);
    assert_eq!(d, b);
    // Cut inside the page data.
    for cut in [entries + 256 * 8 + 10, s.len() - 700_000, s.len() - 100] {
        let (d, b, _) = both_ways(&s[..cut], expect());
        assert!(
            d.starts_with("error: stream: unexpected end of stream"),
            "{cut}: {d}"
        );
        assert_eq!(d, b);
    }
}
