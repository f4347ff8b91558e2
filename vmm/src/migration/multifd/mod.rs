//! `multifd`: the main channel plus `multifd-channels` page channels per
//! migration (QEMU's multifd, `docs/migration-stream.md`).
//!
//! Every connection of a multifd migration starts with a 40-byte hello
//! naming its channel (0 = the main channel, 1..=N page channels), the
//! channel count and a per-migration UUID, so the destination attributes
//! each connection to the migration and refuses strays. The main channel
//! then carries the ordinary stream (header, pass markers, device state,
//! END) without pages; each page channel carries pass markers (the syncs,
//! QEMU's `MULTIFD_FLAG_SYNC`), PAGES records and an END record.
//!
//! - [`send`]: the source's sender threads (one per channel).
//! - [`recv`]: the destination's accept/handshake, receive threads and
//!   the per-pass barrier.

pub mod recv;
pub(crate) mod send;

/// Hello magic.
pub const HELLO_MAGIC: [u8; 8] = *b"MIGTMFDC";
/// Hello version.
pub const HELLO_VERSION: u32 = 1;
/// Hello length in bytes.
pub const HELLO_LEN: usize = 40;
/// Pages handed to a sender thread at once (at most one PAGES record).
pub const JOB_PAGES: usize = 256;

/// The first bytes of every connection of a multifd migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// 0 for the main channel, 1..=`channels` for page channels.
    pub channel: u32,
    /// The source's `multifd-channels`.
    pub channels: u32,
    /// Identifies the migration; the same on all its connections.
    pub uuid: [u8; 16],
}

impl Hello {
    /// The 40 hello bytes (big-endian integers).
    pub fn to_bytes(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..8].copy_from_slice(&HELLO_MAGIC);
        b[8..12].copy_from_slice(&HELLO_VERSION.to_be_bytes());
        b[12..16].copy_from_slice(&self.channel.to_be_bytes());
        b[16..20].copy_from_slice(&self.channels.to_be_bytes());
        // 20..24 reserved, zero
        b[24..40].copy_from_slice(&self.uuid);
        b
    }

    /// Parses and checks a hello; the error names the offending field.
    pub fn parse(b: &[u8; HELLO_LEN]) -> Result<Hello, String> {
        let be32 = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        if b[0..8] != HELLO_MAGIC {
            if b[0..8] == super::stream::MAGIC {
                return Err("a migration stream arrived without a multifd hello: \
                     the multifd capability is enabled on the destination but not on the source"
                    .into());
            }
            return Err(format!(
                "bad multifd hello magic \"{}\" (expected \"MIGTMFDC\")",
                b[0..8].escape_ascii()
            ));
        }
        let version = be32(8);
        if version != HELLO_VERSION {
            return Err(format!(
                "unsupported multifd hello version {version} (this VMM reads version {HELLO_VERSION})"
            ));
        }
        let (channel, channels, reserved) = (be32(12), be32(16), be32(20));
        if reserved != 0 {
            return Err(format!(
                "multifd hello reserved field is {reserved:#x}, must be 0"
            ));
        }
        if !(1..=255).contains(&channels) {
            return Err(format!(
                "multifd hello channel count {channels} is outside 1..=255"
            ));
        }
        if channel > channels {
            return Err(format!(
                "multifd hello channel id {channel} exceeds the channel count {channels}"
            ));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[24..40]);
        Ok(Hello {
            channel,
            channels,
            uuid,
        })
    }
}

/// A fresh per-migration UUID (random, version 4 layout).
pub fn new_uuid() -> [u8; 16] {
    let mut u: [u8; 16] = rand::random();
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// The text form of a UUID for error messages.
pub fn uuid_text(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_rejections() {
        let h = Hello {
            channel: 2,
            channels: 4,
            uuid: new_uuid(),
        };
        assert_eq!(Hello::parse(&h.to_bytes()).unwrap(), h);
        let mut b = h.to_bytes();
        b[21] = 1;
        assert!(Hello::parse(&b).unwrap_err().contains("reserved"));
        let mut b = h.to_bytes();
        b[15] = 5;
        assert_eq!(
            Hello::parse(&b).unwrap_err(),
            "multifd hello channel id 5 exceeds the channel count 4"
        );
        let mut b = h.to_bytes();
        b[16..20].copy_from_slice(&0u32.to_be_bytes());
        assert!(Hello::parse(&b).unwrap_err().contains("outside 1..=255"));
        let mut b = h.to_bytes();
        b[0..8].copy_from_slice(b"MIGTSTRM");
        assert!(Hello::parse(&b).unwrap_err().contains("not on the source"));
        let mut b = h.to_bytes();
        b[11] = 9;
        assert!(Hello::parse(&b).unwrap_err().contains("version 9"));
        assert_eq!(uuid_text(&[0xab; 16]).len(), 36);
    }
}
