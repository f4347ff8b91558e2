//! QEMU's rules for the `multifd` capability and the `multifd-channels` parameter, as the model
//! applies them. Checked against QEMU 7.2 (TCG) on this machine:
//!
//! - `multifd-channels` is a QAPI `uint8`: above 255 (or negative) the input visitor answers
//!   "Parameter 'multifd-channels' expects uint8_t" before any range check; 0 is refused by
//!   `migrate_params_check` with "Parameter 'multifd_channels' expects a value between 1 and
//!   255", after the `downtime-limit` check (both bad: the downtime error wins). The parameter
//!   is accepted at any time, also during a migration; a migration reads it when it starts.
//! - `multifd`, like every capability, is refused on the source while a migration runs
//!   ("There's a migration process in progress"); that rule lives with the other capabilities.
//! - Both sides must agree. Where the source opens more page channels than the destination
//!   takes (multifd on the source only, or more channels on the source), QEMU's destination
//!   fails to load and exits, and the source fails ("Unable to write to socket: Broken pipe").
//!   migtest-vmm fails both sides on every mismatch (its multifd hello names the channel count,
//!   and its destination refuses a plain stream when it expects multifd).
//! - The other way round (multifd on the destination only, or more channels there) QEMU 7.2's
//!   destination waits for channels that never come while the source stays `active` at
//!   dirty-sync-count 1 for ever (measured); the model predicts migtest-vmm's failure, and the
//!   fuzzer does not generate such a migration ([`Mismatch::stalls_qemu`]).

use crate::scenario::{Capability, Op, Side};

use super::types::{Capabilities, Parameters};

/// QEMU's `DEFAULT_MIGRATE_MULTIFD_CHANNELS`.
pub const DEFAULT_CHANNELS: u8 = 2;

/// The input visitor's error for a `multifd-channels` value outside `uint8`.
pub const ERR_CHANNELS_UINT8: &str = "Parameter 'multifd-channels' expects uint8_t";

/// `migrate_params_check`'s error for `multifd-channels` 0.
pub const ERR_CHANNELS_RANGE: &str =
    "Parameter 'multifd_channels' expects a value between 1 and 255";

/// The error of a `multifd-channels` value found while parsing the request (before any range
/// check of any parameter), if any.
pub fn channels_parse_error(channels: Option<u64>) -> Option<&'static str> {
    channels
        .filter(|c| u8::try_from(*c).is_err())
        .map(|_| ERR_CHANNELS_UINT8)
}

/// The range error of a parsed `multifd-channels` value (after the `downtime-limit` check).
pub fn channels_range_error(channels: Option<u64>) -> Option<&'static str> {
    (channels == Some(0)).then_some(ERR_CHANNELS_RANGE)
}

/// How the two sides' multifd settings disagree when a migration starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The source opens connections the destination does not take (multifd on the source
    /// only, or more channels there): both backends fail both sides.
    SourceSendsMore,
    /// The destination waits for connections the source does not open (multifd on the
    /// destination only, or more channels there): migtest-vmm fails both sides, QEMU 7.2 stalls.
    DestinationWaitsForMore,
}

impl Mismatch {
    /// Whether QEMU 7.2 stalls (never fails nor completes) instead of failing.
    pub fn stalls_qemu(self) -> bool {
        self == Mismatch::DestinationWaitsForMore
    }
}

/// The page channels a side opens or expects: 0 without multifd.
fn page_channels(caps: &Capabilities, params: &Parameters) -> u8 {
    if caps.multifd {
        params.multifd_channels
    } else {
        0
    }
}

/// How a migration from a source with `src` settings to a destination with `dst` settings
/// disagrees, if it does (each side's capabilities and parameters at `migrate` time).
pub fn mismatch(
    src: (&Capabilities, &Parameters),
    dst: (&Capabilities, &Parameters),
) -> Option<Mismatch> {
    let sent = page_channels(src.0, src.1);
    let taken = page_channels(dst.0, dst.1);
    match sent.cmp(&taken) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => Some(Mismatch::SourceSendsMore),
        std::cmp::Ordering::Less => Some(Mismatch::DestinationWaitsForMore),
    }
}

/// Whether a `migrate` now would meet a multifd mismatch in some world: the fuzzer does not
/// generate it. QEMU 7.2's outcome is a race there: besides the stall of
/// [`Mismatch::stalls_qemu`], with more source channels its destination sometimes fails and
/// sometimes stays `active`, and its source may keep the migration's yank instance registered,
/// so that every later `migrate` fails with "duplicate yank instance".
pub(super) fn migrate_stalls_qemu(worlds: &[super::world::World]) -> bool {
    worlds.iter().any(|w| {
        w.dst.phase == super::world::DstPhase::Listening
            && mismatch((&w.src.caps, &w.src.params), (&w.dst.caps, &w.dst.params)).is_some()
    })
}

/// The fuzzer's multifd ops with their weights: `idle` (no migration on the source) and
/// `listening` (a fresh destination) weight towards turning multifd on on both sides with the
/// same channel count; mismatches, bad counts and changes during a migration stay rare.
pub(super) fn candidates(idle: bool, listening: bool) -> Vec<(u32, Op)> {
    let w = |cond: bool, hi: u32| if cond { hi } else { 1 };
    let caps = |side, on| Op::set_capability(side, Capability::Multifd, on);
    let channels = |side, n| Op::SetParameters {
        side,
        downtime_limit: None,
        max_bandwidth: None,
        avail_switchover_bandwidth: None,
        switchover_hold: None,
        multifd_channels: Some(n),
        xbzrle_cache_size: None,
        max_postcopy_bandwidth: None,
    };
    vec![
        (w(idle && listening, 4), caps(Side::Source, true)),
        (w(listening, 4), caps(Side::Destination, true)),
        (1, caps(Side::Source, false)),
        (1, caps(Side::Destination, false)),
        (w(idle && listening, 3), channels(Side::Source, 4)),
        (w(listening, 3), channels(Side::Destination, 4)),
        (1, channels(Side::Source, 1)),
        (1, channels(Side::Destination, 1)),
        (1, channels(Side::Source, 0)),
        (1, channels(Side::Destination, 256)),
    ]
}
