//! Unconstrained proptest strategies for the op language (any op, any order). For executable,
//! state-aware sequences use [`crate::model::strategy`].

use proptest::prelude::*;

use super::{MigrationStatus, Op, PairSpec, Scenario, Side, Size, Transport};

/// Any side.
pub fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Source), Just(Side::Destination)]
}

/// Any transport.
pub fn transport() -> impl Strategy<Value = Transport> {
    prop_oneof![Just(Transport::Unix), Just(Transport::Tcp)]
}

/// Any migration status the model knows (precopy's and postcopy-active/-paused).
pub fn status() -> impl Strategy<Value = MigrationStatus> {
    proptest::sample::select(MigrationStatus::MODELLED.to_vec())
}

/// Sizes: round units and odd byte counts.
pub fn size() -> impl Strategy<Value = Size> {
    prop_oneof![
        (0u64..4096).prop_map(Size::mib),
        any::<u64>().prop_map(Size),
    ]
}

/// Any op, with any field values (integers up to `i64::MAX`, the TOML limit).
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            side(),
            proptest::option::of(0..=i64::MAX as u64),
            proptest::option::of(size()),
            proptest::option::of(size()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(prop_oneof![0..=300u64, 0..=i64::MAX as u64]),
            proptest::option::of(size()),
            proptest::option::of(size()),
        )
            .prop_map(|(side, d, b, a, h, c, x, pb)| Op::SetParameters {
                side,
                downtime_limit: d,
                max_bandwidth: b,
                avail_switchover_bandwidth: a,
                switchover_hold: h,
                multifd_channels: c,
                xbzrle_cache_size: x,
                max_postcopy_bandwidth: pb,
            }),
        (
            side(),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(|(side, events, pbs, multifd, x, pc)| Op::SetCapabilities {
                side,
                events,
                pause_before_switchover: pbs,
                multifd,
                xbzrle: x,
                postcopy_ram: pc,
            }),
        proptest::option::of(transport()).prop_map(|transport| Op::Migrate { transport }),
        (0..=i64::MAX as u64).prop_map(|n| Op::WaitPasses { n }),
        Just(Op::Hold {}),
        Just(Op::Release {}),
        Just(Op::Cancel {}),
        Just(Op::StartPostcopy {}),
        status().prop_map(|state| Op::Continue { state }),
        side().prop_map(|side| Op::Stop { side }),
        side().prop_map(|side| Op::Cont { side }),
        (side(), status()).prop_map(|(side, status)| Op::WaitStatus { side, status }),
        Just(Op::WaitCompleted {}),
        side().prop_map(|side| Op::Kill { side }),
        Just(Op::RestartDestination {}),
        Just(Op::CheckMemory {}),
        Just(Op::CheckDestinationRuns {}),
        (side(), any::<bool>()).prop_map(|(side, state)| Op::SetAutoConverge { side, state }),
        (
            side(),
            proptest::option::of(any::<u8>()),
            proptest::option::of(any::<u8>()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<u8>())
        )
            .prop_map(|(side, i, inc, t, m)| Op::SetThrottle {
                side,
                cpu_throttle_initial: i,
                cpu_throttle_increment: inc,
                cpu_throttle_tailslow: t,
                max_cpu_throttle: m
            }),
        Just(Op::WaitThrottled {}),
    ]
}

/// Any pair spec.
pub fn pair_spec() -> impl Strategy<Value = PairSpec> {
    (
        size(),
        1u32..64,
        "[a-z][a-z0-9-]{0,10}",
        transport(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(memory, vcpus, image, transport, dst_paused, events)| PairSpec {
                memory,
                vcpus,
                image,
                transport,
                dst_paused,
                events,
            },
        )
}

/// Any scenario (not necessarily executable).
pub fn scenario() -> impl Strategy<Value = Scenario> {
    (
        "[ -~]{0,40}",
        pair_spec(),
        proptest::collection::vec(op(), 0..16),
    )
        .prop_map(|(purpose, pair, ops)| Scenario { purpose, pair, ops })
}
