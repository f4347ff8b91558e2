//! Unit tests of single QEMU rules: each op in each state, as QEMU answers it.

use super::*;

#[test]
fn migrate_with_hold_stays_in_setup_or_active() {
    let mut m = Model::new(pair());
    run(&mut m, Op::Hold {});
    let (e, _) = run(&mut m, migrate());
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert_eq!(e.statuses(Side::Source), set(&[S::Setup, S::Active]));
    // `none`: QEMU 7.2 shows no destination status until it accepts the stream.
    assert_eq!(
        e.statuses(Side::Destination),
        set(&[S::None, S::Setup, S::Active])
    );
    assert!(e.held_throughout());
    let (e, obs) = run(&mut m, Op::WaitPasses { n: 3 });
    assert_eq!(e.statuses(Side::Source), set(&[S::Active]));
    assert!(obs.source.dirty_sync_count.unwrap() >= 3);
    assert_eq!(e.outcomes[0].source.min_passes, 3);
}

#[test]
fn migrate_without_hold_may_complete() {
    let mut m = Model::new(pair());
    let (e, _) = run(&mut m, migrate());
    assert_eq!(
        e.statuses(Side::Source),
        set(&[S::Setup, S::Active, S::Completed])
    );
    assert!(e.statuses(Side::Destination).contains(&S::Completed));
    let (e, _) = run(&mut m, Op::WaitCompleted {});
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert_eq!(e.statuses(Side::Source), set(&[S::Completed]));
    assert_eq!(e.run_states(Side::Source), [RunState::Postmigrate].into());
    // dst-paused (-S): the destination holds the guest paused.
    assert_eq!(e.run_states(Side::Destination), [RunState::Paused].into());
    assert!(e.outcomes.iter().all(|o| o.memory_must_match));
    let (e, _) = run(&mut m, Op::CheckMemory {});
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    let (e, _) = run(&mut m, Op::CheckDestinationRuns {});
    assert_eq!(e.outcomes[0].guest_owner, GuestOwner::Destination);
    assert!(!e.outcomes[0].memory_must_match);
}

#[test]
fn migrate_while_running_is_refused_in_progress() {
    let mut m = Model::new(pair());
    run_all(&mut m, &[Op::Hold {}, migrate()]);
    let e = m.apply(&migrate());
    assert_eq!(
        e.replies(),
        vec![&ExpectedReply::Error {
            class: GENERIC_ERROR,
            contains: Some(ERR_IN_PROGRESS.into())
        }]
    );
    let v = m.check(&migrate(), &ok_obs(&m, &migrate())).unwrap_err();
    assert!(v.message.contains(ERR_IN_PROGRESS), "{v}");
    m.check(
        &migrate(),
        &err_obs(&m, &migrate(), "There's a migration process in progress"),
    )
    .unwrap();
}

#[test]
fn set_capabilities_only_without_running_migration() {
    let mut m = Model::new(pair());
    let (e, _) = run(&mut m, src_pbs(true));
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    run_all(&mut m, &[Op::Hold {}, migrate()]);
    let (e, _) = run(&mut m, src_pbs(false));
    assert_eq!(
        e.replies(),
        vec![&ExpectedReply::error(ERR_IN_PROGRESS)],
        "source busy"
    );
    assert!(
        m.capabilities(Side::Source)
            .unwrap()
            .pause_before_switchover
    );
    // The destination has no outgoing migration.
    let (e, _) = run(
        &mut m,
        Op::set_capability(Side::Destination, Capability::Events, true),
    );
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    run_all(&mut m, &[Op::Cancel {}, wait_src(S::Cancelled)]);
    let (e, _) = run(&mut m, src_pbs(false));
    assert_eq!(
        e.replies(),
        vec![&ExpectedReply::Ok],
        "cancelled: allowed again"
    );
}

#[test]
fn set_parameters_any_time_but_downtime_range_checked() {
    let mut m = Model::new(pair());
    run_all(&mut m, &[Op::Hold {}, migrate()]);
    let op = Op::SetParameters {
        side: Side::Source,
        downtime_limit: Some(2_000_000),
        max_bandwidth: Some(Size(0)),
        avail_switchover_bandwidth: None,
        switchover_hold: None,
        multifd_channels: None,
        xbzrle_cache_size: None,
        max_postcopy_bandwidth: None,
    };
    let (e, _) = run(&mut m, op);
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert_eq!(
        m.parameters(Side::Source).unwrap().downtime_limit,
        2_000_000
    );
    let bad = Op::SetParameters {
        side: Side::Source,
        downtime_limit: Some(2_000_001),
        max_bandwidth: Some(Size(5)),
        avail_switchover_bandwidth: None,
        switchover_hold: None,
        multifd_channels: None,
        xbzrle_cache_size: None,
        max_postcopy_bandwidth: None,
    };
    let (e, _) = run(&mut m, bad.clone());
    assert_eq!(e.replies(), vec![&ExpectedReply::error(ERR_DOWNTIME_LIMIT)]);
    assert_eq!(
        m.parameters(Side::Source).unwrap().max_bandwidth,
        Size(0),
        "a rejected command changes nothing"
    );
    m.apply(&bad);
    m.check(
        &bad,
        &err_obs(
            &m,
            &bad,
            "Parameter 'downtime_limit' expects an integer in the range of 0 to 2000 seconds",
        ),
    )
    .unwrap();
}

#[test]
fn defaults_match_qemu() {
    let m = Model::new(pair());
    let p = m.parameters(Side::Source).unwrap();
    assert_eq!(p.downtime_limit, 300);
    assert_eq!(p.max_bandwidth, Size(134217728));
    assert_eq!(p.avail_switchover_bandwidth, Size(0));
    assert!(!p.switchover_hold);
    let c = m.capabilities(Side::Destination).unwrap();
    assert!(c.events, "the launcher enables events");
    assert!(!c.pause_before_switchover);
}

#[test]
fn continue_in_wrong_state_names_the_current_status() {
    let mut m = Model::new(pair());
    let op = Op::Continue {
        state: S::PreSwitchover,
    };
    let (e, _) = run(&mut m, op.clone());
    assert_eq!(
        e.replies(),
        vec![&ExpectedReply::error(
            "Migration not in expected state: none"
        )]
    );
    run_all(&mut m, &[Op::Hold {}, migrate(), Op::WaitPasses { n: 2 }]);
    let (e, _) = run(&mut m, op);
    assert_eq!(
        e.replies(),
        vec![&ExpectedReply::error(
            "Migration not in expected state: active"
        )]
    );
}

#[test]
fn pause_before_switchover_then_continue_completes() {
    let mut m = Model::new(pair());
    run_all(&mut m, &[src_pbs(true), migrate()]);
    let (e, _) = run(&mut m, wait_src(S::PreSwitchover));
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert_eq!(e.run_states(Side::Source), [RunState::FinishMigrate].into());
    // wait-completed would sit in pre-switchover until the executor's timeout.
    assert!(m.expect(&Op::WaitCompleted {}).may_time_out());
    let (e, _) = run(
        &mut m,
        Op::Continue {
            state: S::PreSwitchover,
        },
    );
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert!(e.statuses(Side::Source).contains(&S::Device));
    let (e, obs) = run(&mut m, Op::WaitCompleted {});
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    let evs: Vec<&Event> = obs.source.events.iter().collect();
    assert!(
        evs.contains(&&Event::Migration { status: S::Device }),
        "{evs:?}"
    );
    run(&mut m, Op::CheckMemory {});
}

#[test]
fn hold_released_with_pause_before_switchover_reaches_pre_switchover() {
    let mut m = Model::new(pair());
    run_all(&mut m, &pbs_held_two_passes());
    assert!(m.expect(&wait_src(S::PreSwitchover)).may_time_out());
    run(&mut m, Op::Release {});
    let (e, _) = run(&mut m, wait_src(S::PreSwitchover));
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
}

#[test]
fn cancel_is_always_ok() {
    let mut m = Model::new(pair());
    let (e, _) = run(&mut m, Op::Cancel {});
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert_eq!(e.statuses(Side::Source), set(&[S::None]));
    run_all(&mut m, &[migrate(), Op::WaitCompleted {}]);
    let (e, _) = run(&mut m, Op::Cancel {});
    assert_eq!(
        e.statuses(Side::Source),
        set(&[S::Completed]),
        "no-op after completed"
    );
    assert_eq!(e.statuses(Side::Destination), set(&[S::Completed]));
    run(&mut m, Op::Cancel {});
}

#[test]
fn cancel_during_hold_cancels_and_the_source_runs_on() {
    let mut m = Model::new(pair());
    run_all(&mut m, &[Op::Hold {}, migrate(), Op::WaitPasses { n: 2 }]);
    let (e, _) = run(&mut m, Op::Cancel {});
    assert_eq!(
        e.statuses(Side::Source),
        set(&[S::Cancelling, S::Cancelled])
    );
    assert!(e.outcomes.iter().all(|o| o.source.alive == Alive::Yes));
    assert!(e.outcomes.iter().all(|o| o.destination.alive != Alive::Yes));
    let (e, _) = run(&mut m, wait_src(S::Cancelled));
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert_eq!(e.run_states(Side::Source), [RunState::Running].into());
    assert_eq!(e.outcomes[0].guest_owner, GuestOwner::Source);
    // Cancel again: still cancelled.
    let (e, _) = run(&mut m, Op::Cancel {});
    assert_eq!(e.statuses(Side::Source), set(&[S::Cancelled]));
}

#[test]
fn cancel_racing_completion_allows_both_endings() {
    let mut m = Model::new(pair());
    run(&mut m, migrate());
    let e = m.apply(&Op::Cancel {});
    let st = e.statuses(Side::Source);
    assert!(
        st.contains(&S::Completed) && st.contains(&S::Cancelling),
        "{st:?}"
    );
}

#[test]
fn hold_persists_across_migrations() {
    let mut m = Model::new(pair());
    run_all(
        &mut m,
        &[
            Op::Hold {},
            migrate(),
            Op::Cancel {},
            wait_src(S::Cancelled),
            Op::RestartDestination {},
        ],
    );
    let (e, _) = run(&mut m, migrate());
    assert!(
        e.held_throughout(),
        "a hold left set applies to the next migration"
    );
    assert_eq!(m.migrations(), 2);
    run(&mut m, Op::WaitPasses { n: 1 });
    run(&mut m, Op::Release {});
    let (e, _) = run(&mut m, Op::WaitCompleted {});
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
}

#[test]
fn hold_on_the_destination_has_no_effect() {
    let mut m = Model::new(pair());
    run(&mut m, Op::set_hold(Side::Destination, true));
    let (e, _) = run(&mut m, migrate());
    assert!(!e.held_throughout());
    assert!(e.statuses(Side::Source).contains(&S::Completed));
    assert!(m.parameters(Side::Destination).unwrap().switchover_hold);
}

#[test]
fn wait_completed_while_held_times_out() {
    let mut m = Model::new(pair());
    run_all(&mut m, &[Op::Hold {}, migrate()]);
    let e = m.expect(&Op::WaitCompleted {});
    assert_eq!(e.replies(), vec![&ExpectedReply::Timeout]);
    assert!(!executable(&m, &Op::WaitCompleted {}));
}

#[test]
fn migrate_to_a_dead_destination_fails_and_the_source_runs_on() {
    let mut m = Model::new(pair());
    run(
        &mut m,
        Op::Kill {
            side: Side::Destination,
        },
    );
    let (e, _) = run(&mut m, migrate());
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert!(e.statuses(Side::Source).contains(&S::Failed));
    let (e, _) = run(&mut m, wait_src(S::Failed));
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert_eq!(e.run_states(Side::Source), [RunState::Running].into());
    // After failed, a fresh destination makes a new migration work.
    run_all(
        &mut m,
        &[Op::RestartDestination {}, migrate(), Op::WaitCompleted {}],
    );
    run(&mut m, Op::CheckMemory {});
}

#[test]
fn second_migrate_needs_a_fresh_destination() {
    // QEMU's migrate_prepare refuses a source still postmigrate, fresh destination or not.
    let refused =
        ExpectedReply::error("Can't migrate the vm that was paused due to previous migration");
    let mut m = Model::new(pair());
    run_all(&mut m, &[migrate(), Op::WaitCompleted {}]);
    let (e, _) = run(&mut m, migrate());
    assert_eq!(e.replies(), vec![&refused]);
    run_all(&mut m, &[Op::RestartDestination {}]);
    let (e, _) = run(&mut m, migrate());
    assert_eq!(e.replies(), vec![&refused]);
}

#[test]
fn killing_the_destination_during_hold_fails_the_migration() {
    let mut m = Model::new(pair());
    run_all(&mut m, &[Op::Hold {}, migrate(), Op::WaitPasses { n: 2 }]);
    let (e, _) = run(
        &mut m,
        Op::Kill {
            side: Side::Destination,
        },
    );
    assert!(e.statuses(Side::Source).contains(&S::Failed));
    assert!(e.outcomes.iter().all(|o| o.destination.alive == Alive::No));
    let (e, _) = run(&mut m, wait_src(S::Failed));
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert_eq!(e.outcomes[0].guest_owner, GuestOwner::Source);
}

#[test]
fn killing_the_source_fails_the_destination() {
    let mut m = Model::new(pair());
    run_all(&mut m, &[Op::Hold {}, migrate()]);
    let (e, _) = run(&mut m, Op::Kill { side: Side::Source });
    assert!(e.outcomes.iter().all(|o| o.source.alive == Alive::No));
    assert!(e
        .outcomes
        .iter()
        .any(|o| o.destination.alive == Alive::Maybe));
    let (e, _) = run(&mut m, Op::Stop { side: Side::Source });
    assert_eq!(e.replies(), vec![&ExpectedReply::Dead]);
}

#[test]
fn stop_and_cont_on_dead_sides_report_dead() {
    let mut m = Model::new(pair());
    run(
        &mut m,
        Op::Kill {
            side: Side::Destination,
        },
    );
    for op in [
        Op::Stop {
            side: Side::Destination,
        },
        Op::Cont {
            side: Side::Destination,
        },
    ] {
        let (e, _) = run(&mut m, op);
        assert_eq!(e.replies(), vec![&ExpectedReply::Dead]);
    }
}

#[test]
fn stopped_source_migrates_non_live_and_destination_stays_paused() {
    let mut m = Model::new(PairSpec {
        dst_paused: false,
        ..pair()
    });
    run_all(
        &mut m,
        &[Op::Hold {}, migrate(), Op::Stop { side: Side::Source }],
    );
    let (e, _) = run(&mut m, Op::WaitPasses { n: 2 });
    assert_eq!(e.run_states(Side::Source), [RunState::Paused].into());
    run(&mut m, Op::Release {});
    let (e, _) = run(&mut m, Op::WaitCompleted {});
    assert_eq!(e.run_states(Side::Destination), [RunState::Paused].into());
    run(&mut m, Op::CheckMemory {});
}

#[test]
fn destination_without_dash_s_runs_after_completion() {
    let mut m = Model::new(PairSpec {
        dst_paused: false,
        ..pair()
    });
    run(&mut m, migrate());
    let (e, _) = run(&mut m, Op::WaitCompleted {});
    assert_eq!(e.run_states(Side::Destination), [RunState::Running].into());
    assert_eq!(e.outcomes[0].guest_owner, GuestOwner::Destination);
    assert!(m.expect(&Op::CheckMemory {}).refused().is_some());
}

#[test]
fn cont_on_an_incoming_destination_sets_autostart() {
    let mut m = Model::new(pair());
    let (e, _) = run(
        &mut m,
        Op::Cont {
            side: Side::Destination,
        },
    );
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert_eq!(
        e.run_states(Side::Destination),
        [RunState::Inmigrate].into()
    );
    run(&mut m, migrate());
    let (e, _) = run(&mut m, Op::WaitCompleted {});
    assert_eq!(e.run_states(Side::Destination), [RunState::Running].into());
}

#[test]
fn cont_on_a_postmigrate_source_is_the_tests_doing() {
    let mut m = Model::new(pair());
    run_all(
        &mut m,
        &[migrate(), Op::WaitCompleted {}, Op::CheckDestinationRuns {}],
    );
    let (e, _) = run(&mut m, Op::Cont { side: Side::Source });
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert_eq!(e.outcomes[0].guest_owner, GuestOwner::Both);
    assert!(e.allows_both_running());
    assert!(!e.outcomes[0].memory_must_match);
}

#[test]
fn check_memory_needs_a_completed_migration() {
    let mut m = Model::new(pair());
    let e = m.apply(&Op::CheckMemory {});
    assert!(e.refused().is_some());
    m.check(
        &Op::CheckMemory {},
        &Observation {
            reply: Reply::Refused {
                reason: "no migration".into(),
            },
            ..m.canonical_observation(&Op::CheckMemory {})
        },
    )
    .unwrap();
    assert!(!executable(&Model::new(pair()), &Op::CheckMemory {}));
}

#[test]
fn unguaranteed_convergence_may_time_out() {
    let mut m = Model::new(PairSpec {
        memory: Size::mib(128),
        ..PairSpec::default()
    });
    run(&mut m, migrate());
    assert!(m.expect(&Op::WaitCompleted {}).may_time_out());
    let mut op = Op::no_parameters(Side::Source);
    if let Op::SetParameters { downtime_limit, .. } = &mut op {
        *downtime_limit = Some(30_000);
    }
    run(&mut m, op);
    assert!(!m.expect(&Op::WaitCompleted {}).may_time_out());
}

#[test]
fn wait_gives_up_rules() {
    assert!(wait_gives_up(&Op::WaitPasses { n: 3 }, S::Completed));
    assert!(wait_gives_up(&Op::WaitPasses { n: 3 }, S::PreSwitchover));
    assert!(!wait_gives_up(&Op::WaitPasses { n: 3 }, S::Active));
    assert!(wait_gives_up(&Op::WaitCompleted {}, S::Cancelled));
    assert!(!wait_gives_up(&Op::WaitCompleted {}, S::PreSwitchover));
    assert!(!wait_gives_up(&wait_src(S::Failed), S::Failed));
    assert!(wait_gives_up(&wait_src(S::Failed), S::Completed));
}

#[test]
fn statuses_only_move_forward() {
    use Side::*;
    assert!(reachable(Source, S::Setup, S::Completed, false));
    assert!(reachable(Source, S::Active, S::Cancelled, false));
    assert!(!reachable(Source, S::Active, S::Setup, false));
    assert!(!reachable(Source, S::Completed, S::Active, false));
    assert!(
        reachable(Source, S::Completed, S::Active, true),
        "new migration"
    );
    assert!(!reachable(Destination, S::Completed, S::Setup, true));
}
