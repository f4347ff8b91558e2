//! The `multifd_channel` check: one multifd page channel (hello and body)
//! decoded as a destination's receive thread does it, into a flat RAM of
//! the fixture geometry ([`FIXTURE_PAGES`] pages, 1 vCPU, image `0x5eed`).
//! What must hold:
//!
//! - no panic; a refused hello is an error, a refused body a
//!   [`StreamError`] whose offset lies inside the body;
//! - every page the body did not announce still holds its pre-load
//!   content, every announced page the content of its last record;
//! - an accepted channel is exactly the canonical encoding of its hello and
//!   records (`StreamWriter`'s pass markers, PAGES and END).

use super::stream::FIXTURE_PAGES;
use crate::migration::host::PAGE_SIZE;
use crate::migration::multifd::recv::{load_channel, ChannelError};
use crate::migration::multifd::{Hello, HELLO_LEN};
use crate::migration::stream::{Expect, StreamSink, StreamWriter, ZERO_ENTRY};

/// One decoded record of a page channel.
enum ChannelRecord {
    /// A pass marker.
    Pass(u64),
    /// A PAGES record: entries and the full pages' data.
    Pages(Vec<u64>, Vec<u8>),
}

/// What a decoded channel held, record by record.
struct Recorder {
    ram: Vec<u8>,
    announced: Vec<bool>,
    records: Vec<ChannelRecord>,
}

impl Recorder {
    fn store(&mut self, page: u64, data: Option<&[u8; PAGE_SIZE]>) -> Result<(), String> {
        let s = page as usize * PAGE_SIZE;
        let slot = self
            .ram
            .get_mut(s..s + PAGE_SIZE)
            .ok_or_else(|| format!("page {page} passed the range check"))?;
        let (entry, bytes) = match data {
            Some(d) => {
                slot.copy_from_slice(d);
                (page, &d[..])
            }
            None => {
                slot.fill(0);
                (page | ZERO_ENTRY, &[][..])
            }
        };
        self.announced[page as usize] = true;
        match self.records.last_mut() {
            Some(ChannelRecord::Pages(entries, data)) => {
                entries.push(entry);
                data.extend_from_slice(bytes);
                Ok(())
            }
            _ => Err("a page outside a PAGES record".into()),
        }
    }
}

impl StreamSink for Recorder {
    fn pass(&mut self, n: u64) {
        self.records.push(ChannelRecord::Pass(n));
    }
    fn batch(&mut self, _entries: usize) {
        self.records
            .push(ChannelRecord::Pages(Vec::new(), Vec::new()));
    }
    fn zero_page(&mut self, page: u64) -> Result<(), String> {
        self.store(page, None)
    }
    fn page(&mut self, page: u64, data: &[u8; PAGE_SIZE]) -> Result<(), String> {
        self.store(page, Some(data))
    }
    fn xbzrle(&mut self, page: u64, _encoded: &[u8]) -> Result<(), String> {
        // The channel reader refuses XBZRLE records before a sink sees them.
        Err(format!("xbzrle page {page} on a multifd channel"))
    }
}

/// The pre-load content of page `p`: distinct per page, never zero.
fn before(p: usize) -> u8 {
    (0xa5 ^ (p as u8).wrapping_mul(31)) | 1
}

/// Checks one page-channel input; panics when an invariant breaks.
pub fn check_multifd_channel(data: &[u8]) {
    let Some((head, body)) = data.split_first_chunk::<HELLO_LEN>() else {
        return;
    };
    let Ok(hello) = Hello::parse(head) else {
        return;
    };
    let pages = FIXTURE_PAGES as usize;
    let mut rec = Recorder {
        ram: (0..pages * PAGE_SIZE)
            .map(|i| before(i / PAGE_SIZE))
            .collect(),
        announced: vec![false; pages],
        records: Vec::new(),
    };
    let expect = Expect {
        ram_size: FIXTURE_PAGES * PAGE_SIZE as u64,
        vcpus: 1,
        image_id: 0x5eed,
    };
    let result = load_channel(body, expect, &mut rec, |_| Ok(()));
    for p in (0..pages).filter(|p| !rec.announced[*p]) {
        let page = &rec.ram[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
        assert!(
            page.iter().all(|b| *b == before(p)),
            "page {p} changed without a record"
        );
    }
    match result {
        Err(ChannelError::Stream(e)) => assert!(
            e.offset <= body.len() as u64,
            "error offset {} beyond the body ({} bytes): {e}",
            e.offset,
            body.len()
        ),
        Err(ChannelError::Stopped(m)) => panic!("refused without a barrier: {m}"),
        Ok(n) => {
            assert_eq!(n, body.len() as u64, "accepted a prefix of the body");
            let mut w = StreamWriter::new(hello.to_bytes().to_vec());
            for r in &rec.records {
                match r {
                    ChannelRecord::Pass(n) => w.pass(*n),
                    ChannelRecord::Pages(entries, data) => w.pages(entries, data),
                }
                .expect("writing to a Vec");
            }
            w.end().expect("writing to a Vec");
            assert!(
                w.into_inner() == data,
                "an accepted channel is not the canonical encoding of its records"
            );
        }
    }
}
