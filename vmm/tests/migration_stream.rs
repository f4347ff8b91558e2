//! The migration stream codec: round trips, robustness against arbitrary
//! bytes, and the damaged-stream fixtures in `fixtures/streams/`.

use migtest_vmm::migration::stream::{
    self, tag, Expect, Header, NullSink, StreamErrorKind, StreamWriter, VecSink, MAX_DEVICE_STATE,
    ZERO_ENTRY,
};
use migtest_vmm::migration::PAGE_SIZE;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::PathBuf;

// ---------------------------------------------------------------------------
// Largest single allocation per thread, to show the decoder never sizes a
// buffer from an unchecked length.

struct TrackingAlloc;

thread_local! {
    static MAX_ALLOC: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = MAX_ALLOC.try_with(|m| {
        if size > m.get() {
            m.set(size)
        }
    });
}

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: TrackingAlloc = TrackingAlloc;

fn max_alloc_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    MAX_ALLOC.with(|m| m.set(0));
    let r = f();
    (r, MAX_ALLOC.with(|m| m.get()))
}

// ---------------------------------------------------------------------------
// Raw stream building, for valid and damaged streams.

const PAGES: u64 = 4;
const IMAGE: u64 = 0x5eed;

fn expect() -> Expect {
    Expect {
        ram_size: PAGES * PAGE_SIZE as u64,
        vcpus: 1,
        image_id: IMAGE,
    }
}

fn header_bytes(h: Header) -> Vec<u8> {
    h.to_bytes().to_vec()
}

fn good_header() -> Vec<u8> {
    header_bytes(Header::new(PAGES * PAGE_SIZE as u64, 1, IMAGE))
}

fn rec_u64(t: u8, v: u64) -> Vec<u8> {
    let mut b = vec![t];
    b.extend_from_slice(&v.to_be_bytes());
    b
}

fn rec_page(i: u64, fill: u8) -> Vec<u8> {
    let mut b = rec_u64(tag::PAGE, i);
    let mut data = [fill; PAGE_SIZE];
    data[0] = i as u8;
    b.extend_from_slice(&data);
    b
}

/// A PAGES record: `entries` as given, one data page per non-zero entry
/// (filled with its index's low byte, then `fill`).
fn rec_pages(entries: &[u64], fill: u8) -> Vec<u8> {
    let mut b = vec![tag::PAGES];
    b.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        b.extend_from_slice(&e.to_be_bytes());
    }
    for e in entries.iter().filter(|e| *e & ZERO_ENTRY == 0) {
        let mut data = [fill; PAGE_SIZE];
        data[0] = *e as u8;
        b.extend_from_slice(&data);
    }
    b
}

/// Header, pass 1 as one batch (full, zero, zero, full), pass 2 with page 0.
fn batch_body() -> Vec<u8> {
    cat(&[
        good_header(),
        rec_u64(tag::PASS, 1),
        rec_pages(&[0, 1 | ZERO_ENTRY, 2 | ZERO_ENTRY, 3], 0x55),
        rec_u64(tag::PASS, 2),
        rec_pages(&[0], 0xbb),
    ])
}

/// An XBZRLE record with the encoding `enc` as given.
fn rec_xbzrle(page: u64, enc: &[u8]) -> Vec<u8> {
    let mut b = rec_u64(tag::XBZRLE, page);
    b.extend_from_slice(&(enc.len() as u16).to_be_bytes());
    b.extend_from_slice(enc);
    b
}

/// A SPARSE record with the encoding `enc` as given.
fn rec_sparse(page: u64, enc: &[u8]) -> Vec<u8> {
    let mut b = rec_u64(tag::SPARSE, page);
    b.extend_from_slice(&(enc.len() as u16).to_be_bytes());
    b.extend_from_slice(enc);
    b
}

/// `body()`, then pass 3 with page 0 (was 0xbb data) and page 1 (was
/// zero) as SPARSE records: page 0 becomes 0x01 0x02 at bytes 1-2, page 1
/// 0x99 at byte 200; the rest of both zero.
fn sparse_stream(extra: &[Vec<u8>]) -> Vec<u8> {
    let mut parts = vec![
        body(),
        rec_u64(tag::PASS, 3),
        rec_sparse(0, &[1, 2, 1, 2]),
        rec_sparse(1, &[0xc8, 0x01, 1, 0x99]),
    ];
    parts.extend_from_slice(extra);
    parts.push(rec_dev(DEV));
    with_end(cat(&parts))
}

/// `body()`, then pass 3 with page 0 and page 3 as XBZRLE deltas (bytes 1
/// and 2 of page 0 become 0x01 0x02; page 3 gets 0x99 at byte 200).
fn xbzrle_stream(extra: &[Vec<u8>]) -> Vec<u8> {
    let mut parts = vec![
        body(),
        rec_u64(tag::PASS, 3),
        rec_xbzrle(0, &[1, 2, 1, 2]),
        rec_xbzrle(3, &[0xc8, 0x01, 1, 0x99]),
    ];
    parts.extend_from_slice(extra);
    parts.push(rec_dev(DEV));
    with_end(cat(&parts))
}

fn rec_dev(json: &[u8]) -> Vec<u8> {
    let mut b = vec![tag::DEVICE];
    b.extend_from_slice(&(json.len() as u32).to_be_bytes());
    b.extend_from_slice(json);
    b
}

fn with_end(mut v: Vec<u8>) -> Vec<u8> {
    let d = xxhash_rust::xxh3::xxh3_64(&digested_bytes(&v));
    v.extend(rec_u64(tag::END, d));
    v
}

/// What END's digest covers (version 5 on): every byte of `v` but the page
/// data of PAGE and PAGES records. Written from the format's table, not
/// with the crate's reader; bytes after an unknown tag are all covered.
fn digested_bytes(v: &[u8]) -> Vec<u8> {
    let be32 = |at: usize| u32::from_be_bytes(v[at..at + 4].try_into().unwrap()) as usize;
    let mut out = v[..v.len().min(40)].to_vec();
    let mut at = 40;
    while at < v.len() {
        let (head, data) = match v[at] {
            tag::PASS | tag::ZERO | tag::END => (9, 0),
            tag::PAGE => (9, PAGE_SIZE),
            tag::DEVICE if at + 5 <= v.len() => (5 + be32(at + 1), 0),
            tag::PAGES if at + 5 <= v.len() => {
                let n = be32(at + 1);
                let full = (0..n)
                    .filter(|k| at + 5 + k * 8 < v.len() && v[at + 5 + k * 8] & 0x80 == 0)
                    .count();
                (5 + n * 8, full * PAGE_SIZE)
            }
            tag::POSTCOPY => (1 + 8 * (PAGES as usize).div_ceil(64), 0),
            tag::XBZRLE | tag::SPARSE if at + 11 <= v.len() => {
                (11 + u16::from_be_bytes([v[at + 9], v[at + 10]]) as usize, 0)
            }
            _ => (v.len() - at, 0),
        };
        let head_end = (at + head).min(v.len());
        out.extend_from_slice(&v[at..head_end]);
        at = head_end + data;
    }
    out
}

const DEV: &[u8] = br#"{"runstate":"running","devices":{"vcpus":[{"pc":4096}]}}"#;

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// Header, pass 1 with every page, pass 2 with one page; no device/end.
fn body() -> Vec<u8> {
    cat(&[
        good_header(),
        rec_u64(tag::PASS, 1),
        rec_page(0, 0xaa),
        rec_u64(tag::ZERO, 1),
        rec_u64(tag::ZERO, 2),
        rec_page(3, 0x55),
        rec_u64(tag::PASS, 2),
        rec_page(0, 0xbb),
    ])
}

/// A POSTCOPY record with a one-word bitmap.
fn rec_postcopy(bits: u64) -> Vec<u8> {
    rec_u64(tag::POSTCOPY, bits)
}

/// `body()`, then postcopy of `bits`, the device state and `after`.
fn postcopy_stream(bits: u64, after: &[Vec<u8>]) -> Vec<u8> {
    let mut parts = vec![body(), rec_postcopy(bits), rec_dev(DEV)];
    parts.extend_from_slice(after);
    with_end(cat(&parts))
}

fn good() -> Vec<u8> {
    with_end(cat(&[body(), rec_dev(DEV)]))
}

/// Every damaged stream kind, by fixture file name.
fn damaged_cases() -> Vec<(&'static str, Vec<u8>)> {
    let g = good();
    let hdr_with = |f: &dyn Fn(&mut Header)| {
        let mut h = Header::new(PAGES * PAGE_SIZE as u64, 1, IMAGE);
        f(&mut h);
        let mut v = header_bytes(h);
        v.extend_from_slice(&g[40..]);
        v
    };
    let first_page_data = 40 + 9 + 9; // header, pass, page tag+index
    let mut bad_magic = g.clone();
    bad_magic[..8].copy_from_slice(b"QEVM\x00\x00\x00\x03");
    let mut reserved = g.clone();
    reserved[31] = 1;
    // The first page's index 0 made 1: in range, so only the digest (which
    // covers record heads, not page data) can tell.
    let mut flipped = g.clone();
    flipped[first_page_data - 1] ^= 0x01;
    let mut trailing = g.clone();
    trailing.extend_from_slice(b"garbage");
    vec![
        ("good.bin", g.clone()),
        ("empty.bin", vec![]),
        ("truncated-header.bin", g[..20].to_vec()),
        ("truncated-after-header.bin", g[..40].to_vec()),
        (
            "truncated-in-page.bin",
            g[..first_page_data + 1000].to_vec(),
        ),
        ("truncated-in-device-state.bin", g[..g.len() - 15].to_vec()),
        ("truncated-before-end.bin", g[..g.len() - 9].to_vec()),
        ("truncated-in-end.bin", g[..g.len() - 3].to_vec()),
        ("bad-magic.bin", bad_magic),
        (
            "bad-version.bin",
            hdr_with(&|h| h.version = stream::VERSION + 1),
        ),
        ("good-xbzrle.bin", xbzrle_stream(&[])),
        (
            "xbzrle-page-out-of-range.bin",
            xbzrle_stream(&[rec_xbzrle(4, &[0, 1, 1])]),
        ),
        (
            "xbzrle-length-zero.bin",
            xbzrle_stream(&[rec_xbzrle(1, &[])]),
        ),
        (
            "xbzrle-length-too-large.bin",
            xbzrle_stream(&[rec_xbzrle(1, &[0x55; 4097])]),
        ),
        (
            "xbzrle-zero-run-past-page.bin",
            xbzrle_stream(&[rec_xbzrle(1, &[0xff, 0x7f, 1, 1])]),
        ),
        (
            "xbzrle-data-run-past-page.bin",
            xbzrle_stream(&[rec_xbzrle(1, &[0xff, 0x1f, 2, 1, 1])]),
        ),
        (
            "xbzrle-data-run-past-record.bin",
            xbzrle_stream(&[rec_xbzrle(1, &[0, 3, 1, 2])]),
        ),
        (
            "xbzrle-empty-data-run.bin",
            xbzrle_stream(&[rec_xbzrle(1, &[0, 0])]),
        ),
        (
            "xbzrle-empty-zero-run.bin",
            xbzrle_stream(&[rec_xbzrle(1, &[0, 1, 5, 0, 1, 5])]),
        ),
        (
            "xbzrle-length-over-two-bytes.bin",
            xbzrle_stream(&[rec_xbzrle(1, &[0x80, 0x80, 1])]),
        ),
        (
            "xbzrle-run-length-missing.bin",
            xbzrle_stream(&[rec_xbzrle(1, &[5])]),
        ),
        (
            "xbzrle-before-pass.bin",
            with_end(cat(&[
                good_header(),
                rec_xbzrle(0, &[0, 1, 1]),
                rec_dev(DEV),
            ])),
        ),
        (
            "xbzrle-after-device-state.bin",
            with_end(cat(&[body(), rec_dev(DEV), rec_xbzrle(0, &[0, 1, 1])])),
        ),
        (
            "xbzrle-in-postcopy.bin",
            postcopy_stream(0b0001, &[rec_xbzrle(0, &[0, 1, 1])]),
        ),
        ("truncated-in-xbzrle.bin", {
            let x = xbzrle_stream(&[]);
            x[..body().len() + 9 + 11 + 2].to_vec()
        }),
        ("good-sparse.bin", sparse_stream(&[])),
        (
            "sparse-page-out-of-range.bin",
            sparse_stream(&[rec_sparse(4, &[0, 1, 1])]),
        ),
        (
            "sparse-length-zero.bin",
            sparse_stream(&[rec_sparse(1, &[])]),
        ),
        (
            "sparse-length-too-large.bin",
            sparse_stream(&[rec_sparse(1, &[0x55; 4097])]),
        ),
        (
            "sparse-data-run-past-page.bin",
            sparse_stream(&[rec_sparse(1, &[0xff, 0x1f, 2, 1, 1])]),
        ),
        (
            "sparse-empty-zero-run.bin",
            sparse_stream(&[rec_sparse(1, &[0, 1, 5, 0, 1, 5])]),
        ),
        (
            "sparse-before-pass.bin",
            with_end(cat(&[
                good_header(),
                rec_sparse(0, &[0, 1, 1]),
                rec_dev(DEV),
            ])),
        ),
        (
            "sparse-after-device-state.bin",
            with_end(cat(&[body(), rec_dev(DEV), rec_sparse(0, &[0, 1, 1])])),
        ),
        (
            "sparse-in-postcopy.bin",
            postcopy_stream(0b0001, &[rec_sparse(0, &[0, 1, 1])]),
        ),
        ("truncated-in-sparse.bin", {
            let x = sparse_stream(&[]);
            x[..body().len() + 9 + 11 + 2].to_vec()
        }),
        (
            "good-postcopy.bin",
            postcopy_stream(0b1001, &[rec_page(3, 0x77), rec_pages(&[0], 0x66)]),
        ),
        (
            "postcopy-page-not-pending.bin",
            postcopy_stream(0b0001, &[rec_pages(&[0, 1 | ZERO_ENTRY], 0x66)]),
        ),
        (
            "postcopy-page-twice.bin",
            postcopy_stream(0b0001, &[rec_page(0, 0x66), rec_page(0, 0x66)]),
        ),
        (
            "postcopy-incomplete.bin",
            postcopy_stream(0b1001, &[rec_page(0, 0x66)]),
        ),
        (
            "postcopy-bitmap-beyond-ram.bin",
            postcopy_stream(0b1_0001, &[rec_page(0, 0x66)]),
        ),
        (
            "postcopy-pass-after-device.bin",
            postcopy_stream(0b0001, &[rec_u64(tag::PASS, 3)]),
        ),
        (
            "postcopy-page-before-device.bin",
            with_end(cat(&[
                body(),
                rec_postcopy(1),
                rec_page(0, 1),
                rec_dev(DEV),
            ])),
        ),
        (
            "postcopy-twice.bin",
            with_end(cat(&[
                body(),
                rec_postcopy(1),
                rec_postcopy(1),
                rec_dev(DEV),
            ])),
        ),
        (
            "good-batch.bin",
            with_end(cat(&[batch_body(), rec_dev(DEV)])),
        ),
        (
            "batch-empty.bin",
            with_end(cat(&[body(), rec_pages(&[], 0), rec_dev(DEV)])),
        ),
        (
            "batch-too-many-entries.bin",
            with_end(cat(&[
                body(),
                vec![tag::PAGES],
                u32::MAX.to_be_bytes().to_vec(),
                rec_dev(DEV),
            ])),
        ),
        (
            "batch-too-many-full-pages.bin",
            with_end(cat(&[body(), rec_pages(&[1; 257], 0), rec_dev(DEV)])),
        ),
        (
            "batch-page-out-of-range.bin",
            with_end(cat(&[
                body(),
                rec_pages(&[1, 4 | ZERO_ENTRY], 0),
                rec_dev(DEV),
            ])),
        ),
        ("truncated-in-batch.bin", {
            let b = with_end(cat(&[batch_body(), rec_dev(DEV)]));
            b[..40 + 9 + 5 + 32 + 5000].to_vec()
        }),
        ("wrong-page-size.bin", hdr_with(&|h| h.page_size = 65536)),
        (
            "wrong-ram-size.bin",
            hdr_with(&|h| h.ram_size = 8 * PAGE_SIZE as u64),
        ),
        ("wrong-vcpus.bin", hdr_with(&|h| h.vcpus = 4)),
        ("wrong-image.bin", hdr_with(&|h| h.image_id = 0xdead)),
        ("reserved-nonzero.bin", reserved),
        (
            "page-out-of-range.bin",
            with_end(cat(&[
                good_header(),
                rec_u64(tag::PASS, 1),
                rec_page(70000, 1),
                rec_dev(DEV),
            ])),
        ),
        (
            "zero-page-out-of-range.bin",
            with_end(cat(&[
                good_header(),
                rec_u64(tag::PASS, 1),
                rec_u64(tag::ZERO, u64::MAX),
                rec_dev(DEV),
            ])),
        ),
        ("oversize-device-state.bin", {
            let mut v = cat(&[body(), vec![tag::DEVICE], u32::MAX.to_be_bytes().to_vec()]);
            v.extend_from_slice(b"{}");
            v
        }),
        (
            "empty-device-state.bin",
            with_end(cat(&[body(), rec_dev(b"")])),
        ),
        (
            "device-state-garbage.bin",
            with_end(cat(&[body(), rec_dev(b"\x00\xffnot json")])),
        ),
        (
            "device-state-not-a-record.bin",
            with_end(cat(&[body(), rec_dev(br#"{"vcpus":[{"pc":4096}]}"#)])),
        ),
        (
            "device-state-bad-runstate.bin",
            with_end(cat(&[
                body(),
                rec_dev(br#"{"runstate":"inmigrate","devices":{}}"#),
            ])),
        ),
        (
            "page-before-pass.bin",
            with_end(cat(&[good_header(), rec_page(0, 1), rec_dev(DEV)])),
        ),
        (
            "page-after-device-state.bin",
            with_end(cat(&[body(), rec_dev(DEV), rec_page(1, 1)])),
        ),
        (
            "device-state-twice.bin",
            with_end(cat(&[body(), rec_dev(DEV), rec_dev(DEV)])),
        ),
        ("end-before-device-state.bin", with_end(body())),
        (
            "pass-not-increasing.bin",
            with_end(cat(&[
                good_header(),
                rec_u64(tag::PASS, 2),
                rec_u64(tag::PASS, 2),
                rec_dev(DEV),
            ])),
        ),
        (
            "unknown-record.bin",
            with_end(cat(&[body(), vec![0x42, 0, 0, 0], rec_dev(DEV)])),
        ),
        ("digest-mismatch.bin", flipped),
        ("trailing-garbage.bin", trailing),
        ("end-twice.bin", {
            let mut v = g.clone();
            let end = g[g.len() - 9..].to_vec();
            v.extend(end);
            v
        }),
    ]
}

fn decode(bytes: &[u8]) -> Result<stream::LoadSummary, stream::StreamError> {
    stream::load(bytes, expect(), &mut NullSink)
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/streams")
}

/// Regenerates the fixture files when `MIGTEST_REGEN_FIXTURES=1`, otherwise
/// checks they still match what the generator produces.
#[test]
fn fixtures_match_generator() {
    let dir = fixtures_dir();
    let regen = std::env::var("MIGTEST_REGEN_FIXTURES").as_deref() == Ok("1");
    if regen {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes) in damaged_cases() {
        let p = dir.join(name);
        if regen {
            std::fs::write(&p, &bytes).unwrap();
        } else {
            let on_disk = std::fs::read(&p).unwrap_or_else(|e| {
                panic!("{}: {e} (run with MIGTEST_REGEN_FIXTURES=1)", p.display())
            });
            assert_eq!(on_disk, bytes, "{name} differs from the generator");
        }
    }
}

/// Every file in `fixtures/streams/` is decoded; the outcome of each is
/// snapshotted. Only `good*.bin` may load.
#[test]
fn fixture_streams_give_specific_errors() {
    let mut outcomes = BTreeMap::new();
    let mut n = 0;
    for entry in std::fs::read_dir(fixtures_dir()).expect("fixtures/streams exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("bin") {
            continue;
        }
        n += 1;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        let (r, max) = max_alloc_during(|| decode(&bytes));
        assert!(
            max <= 2 * MAX_DEVICE_STATE as usize,
            "{name}: allocated {max} bytes"
        );
        let text = match r {
            Ok(s) if s.sparse_pages > 0 => format!(
                "ok: {} passes, {} pages, {} zero pages, {} sparse pages",
                s.passes, s.pages, s.zero_pages, s.sparse_pages
            ),
            Ok(s) if s.xbzrle_pages > 0 => format!(
                "ok: {} passes, {} pages, {} zero pages, {} xbzrle pages",
                s.passes, s.pages, s.zero_pages, s.xbzrle_pages
            ),
            Ok(s) => format!(
                "ok: {} passes, {} pages, {} zero pages",
                s.passes, s.pages, s.zero_pages
            ),
            Err(e) => {
                assert!(!name.starts_with("good"), "{name}: {e}");
                e.to_string()
            }
        };
        if !name.starts_with("good") {
            assert!(text.starts_with("stream: "), "{name} loaded: {text}");
        }
        outcomes.insert(name, text);
    }
    assert!(
        n >= 11,
        "expected the damaged-stream fixtures, found {n} files"
    );
    let report: String = outcomes
        .iter()
        .map(|(k, v)| format!("{k}: {v}\n"))
        .collect();
    insta::assert_snapshot!("fixture_streams", report);
}

#[test]
fn good_stream_loads_into_an_image() {
    let mut img = vec![0x77u8; PAGES as usize * PAGE_SIZE];
    let s = stream::load(&good()[..], expect(), &mut VecSink(&mut img)).unwrap();
    assert_eq!((s.passes, s.pages, s.zero_pages), (2, 3, 2));
    assert_eq!(s.device_state, DEV);
    assert_eq!(img[0], 0);
    assert_eq!(img[1], 0xbb);
    assert!(img[PAGE_SIZE..3 * PAGE_SIZE].iter().all(|b| *b == 0));
    assert_eq!(img[3 * PAGE_SIZE], 3);
    assert_eq!(img[3 * PAGE_SIZE + 1], 0x55);
}

#[test]
fn xbzrle_stream_decodes_against_the_current_pages() {
    let mut img = vec![0x77u8; PAGES as usize * PAGE_SIZE];
    let s = stream::load(&xbzrle_stream(&[])[..], expect(), &mut VecSink(&mut img)).unwrap();
    assert_eq!((s.passes, s.pages, s.xbzrle_pages), (3, 3, 2));
    // Page 0 was 0x00 0xbb 0xbb ...: bytes 1 and 2 replaced.
    assert_eq!(&img[..4], &[0, 1, 2, 0xbb]);
    assert!(img[4..PAGE_SIZE].iter().all(|b| *b == 0xbb));
    // Page 3 was 0x03 0x55 ...: byte 200 replaced.
    let p3 = &img[3 * PAGE_SIZE..];
    assert_eq!((p3[0], p3[199], p3[200], p3[201]), (3, 0x55, 0x99, 0x55));
    // Every cut of it is refused as truncated.
    let g = xbzrle_stream(&[]);
    for cut in body().len()..g.len() {
        let e = decode(&g[..cut]).expect_err("a truncated stream must not load");
        assert!(
            matches!(e.kind, StreamErrorKind::Truncated { .. }),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn sparse_pages_load_as_zero_but_for_their_runs() {
    let mut img = vec![0x77u8; PAGES as usize * PAGE_SIZE];
    let s = stream::load(&sparse_stream(&[])[..], expect(), &mut VecSink(&mut img)).unwrap();
    assert_eq!((s.passes, s.pages, s.sparse_pages), (3, 3, 2));
    // Page 0 held 0x00 0xbb 0xbb ...: now zero but for bytes 1 and 2.
    assert_eq!(&img[..4], &[0, 1, 2, 0]);
    assert!(img[3..PAGE_SIZE].iter().all(|b| *b == 0));
    // Page 1 (zero) gets 0x99 at byte 200 and nothing else.
    let p1 = &img[PAGE_SIZE..2 * PAGE_SIZE];
    assert_eq!(p1[200], 0x99);
    assert_eq!(p1.iter().filter(|b| **b != 0).count(), 1);
    let g = sparse_stream(&[]);
    for cut in body().len()..g.len() {
        let e = decode(&g[..cut]).expect_err("a truncated stream must not load");
        assert!(
            matches!(e.kind, StreamErrorKind::Truncated { .. }),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn batch_stream_loads_into_an_image() {
    let g = with_end(cat(&[batch_body(), rec_dev(DEV)]));
    let mut img = vec![0x77u8; PAGES as usize * PAGE_SIZE];
    let s = stream::load(&g[..], expect(), &mut VecSink(&mut img)).unwrap();
    assert_eq!((s.passes, s.pages, s.zero_pages), (2, 3, 2));
    assert_eq!(img[1], 0xbb);
    assert!(img[PAGE_SIZE..3 * PAGE_SIZE].iter().all(|b| *b == 0));
    assert_eq!(img[3 * PAGE_SIZE], 3);
    assert_eq!(img[3 * PAGE_SIZE + 1], 0x55);
    for cut in 0..g.len() {
        let e = decode(&g[..cut]).expect_err("a truncated stream must not load");
        assert!(
            matches!(e.kind, StreamErrorKind::Truncated { .. }),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn error_kinds_are_specific() {
    let kind = |name: &str| {
        let (_, b) = damaged_cases()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap();
        decode(&b).unwrap_err()
    };
    let e = kind("page-out-of-range.bin");
    assert_eq!(
        e.kind,
        StreamErrorKind::PageOutOfRange {
            page: 70000,
            pages: 4
        }
    );
    assert_eq!(e.offset, 50);
    assert_eq!(
        e.to_string(),
        "stream: page 70000 out of range (RAM has 4 pages) at offset 50"
    );
    assert!(matches!(
        kind("oversize-device-state.bin").kind,
        StreamErrorKind::DeviceStateTooLarge { .. }
    ));
    assert!(matches!(
        kind("bad-magic.bin").kind,
        StreamErrorKind::BadMagic { .. }
    ));
    assert!(matches!(
        kind("trailing-garbage.bin").kind,
        StreamErrorKind::TrailingData
    ));
    assert!(matches!(
        kind("digest-mismatch.bin").kind,
        StreamErrorKind::Digest { .. }
    ));
}

#[test]
fn every_truncation_of_a_good_stream_is_rejected() {
    let g = good();
    for cut in 0..g.len() {
        let e = decode(&g[..cut]).expect_err("a truncated stream must not load");
        assert!(
            matches!(e.kind, StreamErrorKind::Truncated { .. }),
            "cut at {cut}: {e}"
        );
        assert!(e.offset <= cut as u64);
    }
    assert!(decode(&g).is_ok());
}

// ---------------------------------------------------------------------------
// Property tests.

#[derive(Debug, Clone)]
enum Op {
    Pass,
    Zero(u64),
    Page(u64, u8),
    /// A PAGES record: (page, zero?) entries, data filled with the byte.
    Batch(Vec<(u64, bool)>, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Pass),
        3 => any::<u64>().prop_map(Op::Zero),
        6 => (any::<u64>(), any::<u8>()).prop_map(|(p, b)| Op::Page(p, b)),
        2 => (prop::collection::vec((any::<u64>(), any::<bool>()), 1..40), any::<u8>())
            .prop_map(|(e, b)| Op::Batch(e, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever the writer emits, the reader loads into the same image.
    #[test]
    fn round_trip(pages in 1u64..40, ops in prop::collection::vec(op(), 0..60),
                  dev in "[a-z0-9 ]{0,64}", vcpus in 1u32..8, image in any::<u64>()) {
        let mut w = StreamWriter::new(Vec::new());
        w.header(&Header::new(pages * PAGE_SIZE as u64, vcpus, image)).unwrap();
        let mut expected = vec![0u8; pages as usize * PAGE_SIZE];
        let mut pass = 1;
        w.pass(pass).unwrap();
        for o in &ops {
            match *o {
                Op::Pass => { pass += 1; w.pass(pass).unwrap(); }
                Op::Zero(p) => {
                    let p = p % pages;
                    w.zero_page(p).unwrap();
                    expected[p as usize * PAGE_SIZE..][..PAGE_SIZE].fill(0);
                }
                Op::Page(p, b) => {
                    let p = p % pages;
                    let mut d = [b; PAGE_SIZE];
                    d[7] = (p % 251) as u8;
                    w.page(p, &d).unwrap();
                    expected[p as usize * PAGE_SIZE..][..PAGE_SIZE].copy_from_slice(&d);
                }
                Op::Batch(ref entries, b) => {
                    let mut wire = Vec::new();
                    let mut data = Vec::new();
                    for &(p, zero) in entries {
                        let p = p % pages;
                        let at = p as usize * PAGE_SIZE;
                        if zero {
                            wire.push(p | ZERO_ENTRY);
                            expected[at..at + PAGE_SIZE].fill(0);
                        } else {
                            wire.push(p);
                            let mut d = [b; PAGE_SIZE];
                            d[9] = (p % 241) as u8;
                            data.extend_from_slice(&d);
                            expected[at..at + PAGE_SIZE].copy_from_slice(&d);
                        }
                    }
                    w.pages(&wire, &data).unwrap();
                }
            }
        }
        let json = serde_json::to_vec(&serde_json::json!({ "runstate": "paused", "devices": { "s": dev } })).unwrap();
        w.device_state(&json).unwrap();
        w.end().unwrap();
        let written = w.written();
        let bytes = w.into_inner();
        prop_assert_eq!(written, bytes.len() as u64);
        let mut img = vec![0u8; pages as usize * PAGE_SIZE];
        let ex = Expect { ram_size: pages * PAGE_SIZE as u64, vcpus, image_id: image };
        let s = stream::load(&bytes[..], ex, &mut VecSink(&mut img)).unwrap();
        prop_assert_eq!(s.passes, pass);
        prop_assert_eq!(s.device_state, json);
        prop_assert_eq!(s.bytes, bytes.len() as u64);
        prop_assert!(img == expected);
    }

    /// Arbitrary bytes never panic and never make the decoder allocate
    /// more than a device state's worth.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let (r, max) = max_alloc_during(|| decode(&bytes));
        prop_assert!(r.is_err());
        prop_assert!(max <= 2 * MAX_DEVICE_STATE as usize);
    }

    /// A valid header followed by arbitrary records: still no panic, no
    /// huge allocation, and errors always name an offset inside the input.
    #[test]
    fn arbitrary_records_never_panic(tail in prop::collection::vec(any::<u8>(), 0..4096)) {
        let mut bytes = good_header();
        bytes.extend_from_slice(&tail);
        let (r, max) = max_alloc_during(|| decode(&bytes));
        prop_assert!(max <= 2 * MAX_DEVICE_STATE as usize);
        if let Err(e) = r {
            prop_assert!(e.offset <= bytes.len() as u64);
        }
    }

    /// Single-byte corruptions of a good stream are rejected (the digest
    /// catches the ones no field check does) and never panic, except in
    /// page data, which the digest does not cover (version 5): such a
    /// stream loads with exactly that byte changed.
    #[test]
    fn corrupted_good_stream_is_rejected(pos in 0usize..100_000, xor in 1u8..=255) {
        let mut g = good();
        let pos = pos % g.len();
        g[pos] ^= xor;
        let load = |bytes: &[u8]| {
            let mut img = vec![0u8; PAGES as usize * PAGE_SIZE];
            stream::load(bytes, expect(), &mut VecSink(&mut img)).map(|_| img)
        };
        let want = load(&good()).expect("the good stream loads");
        if let Ok(img) = load(&g) {
            let changed: Vec<usize> = (0..img.len()).filter(|&i| img[i] != want[i]).collect();
            // Page 0's first copy is overwritten by its second: no change.
            prop_assert!(changed.len() <= 1, "corruption at {} accepted: {:?}", pos, changed);
            for i in changed {
                prop_assert_eq!(img[i] ^ want[i], xor, "corruption at {} accepted", pos);
            }
        }
    }
}
