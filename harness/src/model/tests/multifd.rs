//! The multifd rules (`model/multifd.rs`): parameter errors, the capability during a migration,
//! and what a mismatch between the sides does.

use super::*;
use crate::model::multifd::{
    channels_parse_error, channels_range_error, mismatch, Mismatch, DEFAULT_CHANNELS,
    ERR_CHANNELS_RANGE, ERR_CHANNELS_UINT8,
};

fn caps(side: Side, on: bool) -> Op {
    Op::set_capability(side, Capability::Multifd, on)
}

fn params(side: Side, channels: u64, downtime_limit: Option<u64>) -> Op {
    Op::SetParameters {
        side,
        downtime_limit,
        max_bandwidth: None,
        avail_switchover_bandwidth: None,
        switchover_hold: None,
        multifd_channels: Some(channels),
        xbzrle_cache_size: None,
        max_postcopy_bandwidth: None,
    }
}

/// Sets multifd and a channel count on each side (`None`: multifd off).
fn configured(src: Option<u64>, dst: Option<u64>) -> Model {
    let mut m = Model::new(pair());
    for (side, cfg) in [(Side::Source, src), (Side::Destination, dst)] {
        if let Some(n) = cfg {
            run_all(&mut m, &[caps(side, true), params(side, n, None)]);
        }
    }
    m
}

#[test]
fn channel_count_errors_are_qemus_in_qemus_order() {
    assert_eq!(channels_parse_error(None), None);
    assert_eq!(channels_range_error(None), None);
    for ok in [1u64, 2, 4, 128, 255] {
        assert_eq!(channels_parse_error(Some(ok)), None, "{ok}");
        assert_eq!(channels_range_error(Some(ok)), None, "{ok}");
    }
    for big in [256u64, 1000, u64::from(u32::MAX), i64::MAX as u64, u64::MAX] {
        assert_eq!(channels_parse_error(Some(big)), Some(ERR_CHANNELS_UINT8));
    }
    assert_eq!(channels_parse_error(Some(0)), None);
    assert_eq!(channels_range_error(Some(0)), Some(ERR_CHANNELS_RANGE));
    // Both bad: the uint8 parse error comes first, then downtime-limit, then the range.
    for side in [Side::Source, Side::Destination] {
        let cases = [
            (256, Some(3_000_000), ERR_CHANNELS_UINT8),
            (0, Some(3_000_000), ERR_DOWNTIME_LIMIT),
            (0, Some(10), ERR_CHANNELS_RANGE),
            (0, None, ERR_CHANNELS_RANGE),
            (300, None, ERR_CHANNELS_UINT8),
        ];
        for (n, d, want) in cases {
            let mut m = Model::new(pair());
            let e = m.apply(&params(side, n, d));
            assert_eq!(e.replies(), vec![&ExpectedReply::error(want)], "{n} {d:?}");
            // Nothing of a refused request is applied.
            let obs = err_obs(&m, &params(side, n, d), want);
            m.observe(&params(side, n, d), &obs);
            let p = m.parameters(side).unwrap();
            assert_eq!(p.multifd_channels, DEFAULT_CHANNELS);
            assert_eq!(p.downtime_limit, 300);
        }
    }
}

#[test]
fn channel_count_is_applied_on_its_side_only() {
    for (n, side) in [
        (1u64, Side::Source),
        (255, Side::Destination),
        (7, Side::Source),
    ] {
        let mut m = Model::new(pair());
        let (e, _) = run(&mut m, params(side, n, Some(500)));
        assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
        let p = m.parameters(side).unwrap();
        assert_eq!(u64::from(p.multifd_channels), n);
        assert_eq!(p.downtime_limit, 500);
        let other = match side {
            Side::Source => Side::Destination,
            Side::Destination => Side::Source,
        };
        assert_eq!(
            m.parameters(other).unwrap().multifd_channels,
            DEFAULT_CHANNELS
        );
    }
}

#[test]
fn channel_count_may_change_during_a_migration() {
    let mut m = configured(Some(2), Some(2));
    run_all(&mut m, &[Op::Hold {}, migrate()]);
    let (e, _) = run(&mut m, params(Side::Source, 8, None));
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert_eq!(m.parameters(Side::Source).unwrap().multifd_channels, 8);
}

#[test]
fn capability_is_refused_on_the_source_during_a_migration() {
    for on in [true, false] {
        let mut m = configured(Some(2), Some(2));
        run_all(&mut m, &[Op::Hold {}, migrate()]);
        let e = m.apply(&caps(Side::Source, on));
        assert_eq!(e.replies(), vec![&ExpectedReply::error(ERR_IN_PROGRESS)]);
        let obs = err_obs(&m, &caps(Side::Source, on), ERR_IN_PROGRESS);
        m.observe(&caps(Side::Source, on), &obs);
        assert!(m.capabilities(Side::Source).unwrap().multifd, "unchanged");
        // After the migration ends it is accepted again.
        run_all(&mut m, &[Op::Cancel {}, wait_src(S::Cancelled)]);
        let (e, _) = run(&mut m, caps(Side::Source, on));
        assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
        assert_eq!(m.capabilities(Side::Source).unwrap().multifd, on);
    }
}

#[test]
fn capability_is_accepted_on_a_listening_destination() {
    let mut m = Model::new(pair());
    let (e, _) = run(&mut m, caps(Side::Destination, true));
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert!(m.capabilities(Side::Destination).unwrap().multifd);
    assert!(!m.capabilities(Side::Source).unwrap().multifd);
}

#[test]
fn mismatch_classifies_every_pairing() {
    let side = |multifd: bool, n: u8| {
        (
            Capabilities {
                multifd,
                ..Capabilities::default()
            },
            Parameters {
                multifd_channels: n,
                ..Parameters::default()
            },
        )
    };
    for s in 1..=6u8 {
        for d in 1..=6u8 {
            let (sc, sp) = side(true, s);
            let (dc, dp) = side(true, d);
            let got = mismatch((&sc, &sp), (&dc, &dp));
            let want = match s.cmp(&d) {
                std::cmp::Ordering::Equal => None,
                std::cmp::Ordering::Greater => Some(Mismatch::SourceSendsMore),
                std::cmp::Ordering::Less => Some(Mismatch::DestinationWaitsForMore),
            };
            assert_eq!(got, want, "{s} vs {d}");
            // Off on both sides: channel counts do not matter.
            let (sc, sp) = side(false, s);
            let (dc, dp) = side(false, d);
            assert_eq!(mismatch((&sc, &sp), (&dc, &dp)), None);
            // Off on one side only.
            let (oc, op) = side(false, d);
            assert_eq!(
                mismatch((&sc, &sp), (&side(true, d).0, &side(true, d).1)),
                Some(Mismatch::DestinationWaitsForMore)
            );
            assert_eq!(
                mismatch((&side(true, s).0, &side(true, s).1), (&oc, &op)),
                Some(Mismatch::SourceSendsMore)
            );
        }
    }
    assert!(Mismatch::DestinationWaitsForMore.stalls_qemu());
    assert!(!Mismatch::SourceSendsMore.stalls_qemu());
}

#[test]
fn matching_sides_migrate_as_without_multifd() {
    for n in [1u64, 2, 4, 255] {
        let mut m = configured(Some(n), Some(n));
        let (e, _) = run(&mut m, migrate());
        assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
        assert!(e.statuses(Side::Source).contains(&S::Completed), "{n}");
        run_all_ok(&mut m, &[Op::WaitCompleted {}, Op::CheckMemory {}]);
    }
}

#[test]
fn a_mismatch_fails_both_sides() {
    // (source, destination): None = multifd off.
    let cases = [
        (Some(2), None),
        (None, Some(2)),
        (Some(4), Some(2)),
        (Some(1), Some(3)),
        (Some(255), Some(254)),
    ];
    for (src, dst) in cases {
        let mut m = configured(src, dst);
        let (e, _) = run(&mut m, migrate());
        assert_eq!(e.replies(), vec![&ExpectedReply::Ok], "{src:?} {dst:?}");
        assert!(
            !e.statuses(Side::Source).contains(&S::Completed),
            "{src:?} {dst:?}: never completes"
        );
        assert!(e.statuses(Side::Destination).contains(&S::Failed));
        let (e, _) = run(&mut m, wait_src(S::Failed));
        assert_eq!(e.replies(), vec![&ExpectedReply::Ok], "{src:?} {dst:?}");
        assert_eq!(e.statuses(Side::Source), set(&[S::Failed]));
        // The source guest keeps running.
        assert_eq!(e.run_states(Side::Source), [RunState::Running].into());
        assert!(e.outcomes.iter().all(|o| !o.memory_must_match));
        // A completed observation is a violation.
        let mut m2 = configured(src, dst);
        m2.apply(&migrate());
        let mut obs = m2.canonical_observation(&migrate());
        obs.source.status = Some(S::Completed);
        obs.source.events.push(Event::Migration {
            status: S::Completed,
        });
        assert!(m2.check(&migrate(), &obs).is_err(), "{src:?} {dst:?}");
    }
}

#[test]
fn a_fresh_destination_forgets_multifd() {
    let mut m = configured(Some(2), Some(2));
    run_all(
        &mut m,
        &[migrate(), Op::WaitCompleted {}, Op::RestartDestination {}],
    );
    assert!(!m.capabilities(Side::Destination).unwrap().multifd);
    assert_eq!(
        m.parameters(Side::Destination).unwrap().multifd_channels,
        DEFAULT_CHANNELS
    );
    // Migrating again now is a mismatch (source multifd, destination not) and fails.
    run(&mut m, Op::Cont { side: Side::Source });
    let (e, _) = run(&mut m, migrate());
    assert!(e.statuses(Side::Destination).contains(&S::Failed));
}

#[test]
fn the_generator_avoids_multifd_mismatches() {
    // QEMU 7.2 stalls on some and races on the others (see `migrate_stalls_qemu`).
    use crate::model::strategy::executable;
    for (src, dst, stalls) in [
        (None, Some(2), true),
        (Some(1), Some(3), true),
        (Some(3), Some(1), true),
        (Some(2), None, true),
        (Some(2), Some(2), false),
        (None, None, false),
    ] {
        let m = configured(src, dst);
        assert_eq!(executable(&m, &migrate()), !stalls, "{src:?} -> {dst:?}");
    }
}

#[test]
fn generated_sequences_set_multifd() {
    // The state machine offers the multifd ops from a fresh pair.
    let m = Model::new(pair());
    let ops: Vec<Op> = crate::model::strategy::candidates(&m)
        .into_iter()
        .map(|(_, op)| op)
        .filter(|op| executable_here(&m, op))
        .collect();
    assert!(ops.contains(&caps(Side::Source, true)));
    assert!(ops.contains(&caps(Side::Destination, true)));
    assert!(ops.contains(&params(Side::Source, 4, None)));
    assert!(ops.contains(&params(Side::Source, 0, None)));
    assert!(ops.contains(&params(Side::Destination, 256, None)));
}

fn executable_here(m: &Model, op: &Op) -> bool {
    crate::model::strategy::executable(m, op)
}
