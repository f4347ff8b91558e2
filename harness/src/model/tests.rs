//! Unit tests of the QEMU rules and property tests of the model against its own oracle.

use proptest::prelude::*;
use proptest_state_machine::ReferenceStateMachine;

use super::strategy::{executable, sequence_is_executable, PairMachine, SEQUENCE_LEN};
use super::*;
use crate::scenario::{Capability, Size};

use MigrationStatus as S;

fn pair() -> PairSpec {
    // 16 MiB converges with the default 128 MiB/s x 300 ms.
    PairSpec {
        memory: Size::mib(16),
        ..PairSpec::default()
    }
}

/// Applies `op` and feeds the canonical observation back; panics on a violation.
fn run(m: &mut Model, op: Op) -> (Expectation, Observation) {
    let e = m.apply(&op);
    let obs = m.canonical_observation(&op);
    if let Err(v) = m.check(&op, &obs) {
        panic!("canonical observation rejected: {v}\n{obs:#?}");
    }
    m.observe(&op, &obs);
    (e, obs)
}

fn run_all(m: &mut Model, ops: &[Op]) {
    for op in ops {
        run(m, op.clone());
    }
}

/// [`run_all`], each op allowed only with `Ok`.
fn run_all_ok(m: &mut Model, ops: &[Op]) {
    for op in ops {
        let (e, _) = run(m, op.clone());
        assert_eq!(e.replies(), vec![&ExpectedReply::Ok], "{op}");
    }
}

fn set(v: &[MigrationStatus]) -> std::collections::BTreeSet<MigrationStatus> {
    v.iter().copied().collect()
}

fn err_obs(m: &Model, op: &Op, desc: &str) -> Observation {
    let mut o = m.canonical_observation(op);
    o.reply = Reply::Error {
        class: "GenericError".into(),
        desc: desc.into(),
    };
    o
}

fn ok_obs(m: &Model, op: &Op) -> Observation {
    let mut o = m.canonical_observation(op);
    o.reply = Reply::Ok;
    o
}

fn migrate() -> Op {
    Op::Migrate { transport: None }
}

fn wait_src(status: MigrationStatus) -> Op {
    Op::WaitStatus {
        side: Side::Source,
        status,
    }
}

fn src_pbs(on: bool) -> Op {
    Op::set_capability(Side::Source, Capability::PauseBeforeSwitchover, on)
}

/// Applies `op` and returns its canonical observation (to be altered and checked).
fn planned(m: &mut Model, op: &Op) -> Observation {
    m.apply(op);
    m.canonical_observation(op)
}

/// An un-held migration started, then `stop` on the destination applied: the model, the op
/// and its canonical observation.
fn stop_destination_after_migrate() -> (Model, Op, Observation) {
    let mut m = Model::new(pair());
    run(&mut m, migrate());
    let op = Op::Stop {
        side: Side::Destination,
    };
    let obs = planned(&mut m, &op);
    (m, op, obs)
}

/// `side` shows a migration that went active, then completed, and the guest in `run`.
fn shows_completed(side: &mut SideObservation, run: RunState) {
    side.status = Some(S::Completed);
    side.run_state = Some(run);
    side.events = vec![
        Event::Migration { status: S::Active },
        Event::Migration {
            status: S::Completed,
        },
    ];
}

/// pause-before-switchover on, held migration, two passes: release it next.
fn pbs_held_two_passes() -> Vec<Op> {
    vec![
        src_pbs(true),
        Op::Hold {},
        migrate(),
        Op::WaitPasses { n: 2 },
    ]
}

/// The single QEMU rules, one test each.
mod auto_converge;
mod rules;

/// The multifd rules.
mod multifd;
/// Postcopy rules.
mod postcopy;

#[test]
fn rejects_destination_completed_before_the_source_stopped() {
    let mut m = Model::new(pair());
    let op = migrate();
    let mut obs = planned(&mut m, &op);
    obs.destination.status = Some(S::Completed);
    obs.destination.run_state = Some(RunState::Paused);
    obs.destination.events = vec![
        Event::Migration { status: S::Setup },
        Event::Migration { status: S::Active },
        Event::Migration {
            status: S::Completed,
        },
    ];
    let v = m.check(&op, &obs).unwrap_err();
    assert!(v.message.contains("past switchover"), "{v}");
}

#[test]
fn legal_transitions_follow_qemu() {
    use Side::*;
    assert!(legal_transition(Source, S::None, S::Setup));
    assert!(legal_transition(Source, S::Active, S::Completed));
    assert!(legal_transition(Source, S::PreSwitchover, S::Cancelling));
    assert!(legal_transition(Source, S::Cancelled, S::Setup));
    assert!(!legal_transition(Source, S::Setup, S::Completed));
    assert!(!legal_transition(Source, S::Completed, S::Cancelling));
    assert!(!legal_transition(Source, S::Cancelling, S::Active));
    assert!(legal_transition(Destination, S::Active, S::Failed));
    assert!(!legal_transition(Destination, S::Completed, S::Setup));
    assert!(!legal_transition(Destination, S::Active, S::Cancelling));
}

// ---- violations ----

fn held_model() -> Model {
    let mut m = Model::new(pair());
    run_all(&mut m, &[Op::Hold {}, migrate(), Op::WaitPasses { n: 3 }]);
    m
}

#[test]
fn rejects_completion_while_held() {
    let mut m = held_model();
    let op = Op::WaitPasses { n: 4 };
    let mut obs = planned(&mut m, &op);
    obs.source.status = Some(S::Completed);
    obs.source.run_state = Some(RunState::Postmigrate);
    let v = m.check(&op, &obs).unwrap_err();
    assert!(v.message.contains("switchover-hold"), "{v}");
    assert!(!v.to_string().contains('\n'));
    obs.source.status = None;
    obs.source.events.push(Event::Migration {
        status: S::Completed,
    });
    let v = m.check(&op, &obs).unwrap_err();
    assert!(v.message.contains("switchover-hold"), "{v}");
}

#[test]
fn rejects_decreasing_pass_count() {
    let mut m = held_model();
    let op = Op::WaitPasses { n: 4 };
    let mut obs = planned(&mut m, &op);
    obs.source.dirty_sync_count = Some(2);
    obs.source.events.clear();
    let v = m.check(&op, &obs).unwrap_err();
    assert!(v.message.contains("dirty-sync-count"), "{v}");
    let mut obs = m.canonical_observation(&op);
    obs.source.events.push(Event::MigrationPass { pass: 2 });
    let v = m.check(&op, &obs).unwrap_err();
    assert!(v.message.contains("MIGRATION_PASS"), "{v}");
}

#[test]
fn rejects_illegal_event_order() {
    let mut m = Model::new(pair());
    let op = migrate();
    let mut obs = planned(&mut m, &op);
    obs.source.events = vec![
        Event::Migration { status: S::Setup },
        Event::Migration {
            status: S::Completed,
        },
    ];
    obs.source.status = Some(S::Completed);
    obs.source.run_state = Some(RunState::Postmigrate);
    let v = m.check(&op, &obs).unwrap_err();
    assert!(v.message.contains("not a legal transition"), "{v}");
}

#[test]
fn rejects_status_that_disagrees_with_events() {
    let mut m = Model::new(pair());
    let op = migrate();
    let mut obs = planned(&mut m, &op);
    obs.source.events.clear();
    obs.source.status = Some(S::Active);
    let v = m.check(&op, &obs).unwrap_err();
    assert!(v.message.contains("last MIGRATION event"), "{v}");
}

#[test]
fn rejects_both_sides_running() {
    let mut m = Model::new(pair());
    run(&mut m, migrate());
    let op = Op::WaitCompleted {};
    let mut obs = planned(&mut m, &op);
    obs.source.run_state = Some(RunState::Running);
    obs.destination.run_state = Some(RunState::Running);
    let v = m.check(&op, &obs).unwrap_err();
    assert!(v.message.contains("both"), "{v}");
}

#[test]
fn rejects_dead_source_after_cancel() {
    let mut m = held_model();
    m.apply(&Op::Cancel {});
    let mut obs = m.canonical_observation(&Op::Cancel {});
    obs.source = SideObservation::dead();
    let v = m.check(&Op::Cancel {}, &obs).unwrap_err();
    assert!(v.message.contains("source alive"), "{v}");
}

/// QEMU 7.2's `migrate_fd_cancel` sets `cancelling` again on a second `migrate_cancel`
/// while cancelling: a repeated event, accepted; any other status after it is not.
#[test]
fn second_cancel_may_repeat_cancelling() {
    let mut m = held_model();
    let cancelling = Event::Migration {
        status: S::Cancelling,
    };
    let mut obs = planned(&mut m, &Op::Cancel {});
    obs.source.status = Some(S::Cancelling);
    obs.source.events = vec![cancelling.clone()];
    m.step(&Op::Cancel {}, &obs).unwrap();
    let mut again = planned(&mut m, &Op::Cancel {});
    again.source.status = Some(S::Cancelling);
    again.source.events = vec![cancelling];
    m.check(&Op::Cancel {}, &again).unwrap();
    again.source.events = vec![Event::Migration { status: S::Active }];
    let v = m.check(&Op::Cancel {}, &again).unwrap_err();
    assert!(v.message.contains("not a legal transition"), "{v}");
}

#[test]
fn rejects_wrong_error_text_and_unexpected_errors() {
    let mut m = held_model();
    let op = Op::Continue {
        state: S::PreSwitchover,
    };
    m.apply(&op);
    let v = m
        .check(
            &op,
            &err_obs(&m, &op, "Migration not in expected state: setup"),
        )
        .unwrap_err();
    assert!(v.message.contains("active"), "{v}");
    let v = m.check(&op, &ok_obs(&m, &op)).unwrap_err();
    assert!(v.message.contains("expected reply"), "{v}");
}

#[test]
fn observation_narrows_races() {
    let mut m = Model::new(pair());
    run(&mut m, migrate());
    let op = Op::Cancel {};
    m.apply(&op);
    assert!(m.possibilities() > 1);
    let mut obs = m.canonical_observation(&op);
    // Completed just before the cancel: the cancel is a no-op.
    shows_completed(&mut obs.source, RunState::Postmigrate);
    obs.source.dirty_sync_count = Some(2);
    obs.source.events.push(Event::MigrationPass { pass: 1 });
    obs.source.events.push(Event::MigrationPass { pass: 2 });
    obs.destination = SideObservation {
        alive: true,
        status: Some(S::Completed),
        run_state: Some(RunState::Paused),
        dirty_sync_count: None,
        cpu_throttle: None,
        events: vec![
            Event::Migration { status: S::Active },
            Event::Migration {
                status: S::Completed,
            },
        ],
    };
    m.step(&op, &obs).unwrap();
    let (e, _) = run(&mut m, Op::CheckMemory {});
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
}

// ---- properties ----

/// Applicable invariant-breaking mutations of an allowed observation; each must be rejected.
fn mutations(
    m: &Model,
    op: &Op,
    exp: &Expectation,
    obs: &Observation,
) -> Vec<(String, Observation)> {
    let mut out = Vec::new();
    if exp.held_throughout() && obs.source.alive {
        let mut o = obs.clone();
        o.source.status = Some(S::Completed);
        o.source.run_state = Some(RunState::Postmigrate);
        o.source.events.push(Event::Migration {
            status: S::Completed,
        });
        out.push(("completed while held".into(), o));
    }
    let restarted = matches!(op, Op::Migrate { .. }) && obs.reply == Reply::Ok;
    if obs.source.alive && !restarted && m.history.last_count > 0 {
        let mut o = obs.clone();
        o.source.dirty_sync_count = Some(m.history.last_count - 1);
        out.push(("decreasing pass count".into(), o));
    }
    for side in Side::ALL {
        let so = obs.side(side);
        if !so.alive || !exp.outcomes[0].side(side).events {
            continue;
        }
        let last = so
            .events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::Migration { status } => Some(*status),
                _ => None,
            })
            .or(match (side, m.history.src, m.history.dst) {
                // A restarted destination starts over from `none`.
                (Side::Destination, _, _) if *op == (Op::RestartDestination {}) => Some(S::None),
                (Side::Source, Last::At(s), _) | (Side::Destination, _, Last::At(s)) => Some(s),
                (Side::Source, Last::Fresh, _) => Some(S::None),
                (Side::Destination, _, Last::Fresh) if *op != (Op::RestartDestination {}) => {
                    Some(S::None)
                }
                _ => None,
            });
        if let Some(last) = last {
            if let Some(bad) = crate::model::STATUSES
                .into_iter()
                .find(|s| *s != S::None && !legal_transition(side, last, *s))
            {
                let mut o = obs.clone();
                o.side_mut(side)
                    .events
                    .push(Event::Migration { status: bad });
                out.push((format!("illegal {side} event {bad} after {last}"), o));
            }
        }
    }
    if obs.source.alive && obs.destination.alive && !exp.allows_both_running() {
        let mut o = obs.clone();
        o.source.run_state = Some(RunState::Running);
        o.destination.run_state = Some(RunState::Running);
        out.push(("both running".into(), o));
    }
    if obs.source.alive && m.history.src_seen == Some(S::Active) && !restarted {
        let mut o = obs.clone();
        o.source.status = Some(S::Setup);
        out.push(("source status back to setup".into(), o));
    }
    if *op == (Op::Cancel {}) && obs.reply == Reply::Ok {
        let mut o = obs.clone();
        o.source = SideObservation::dead();
        out.push(("source dead after cancel".into(), o));
    }
    if obs.reply == Reply::Ok
        && !exp
            .outcomes
            .iter()
            .any(|o| matches!(o.reply, ExpectedReply::Error { .. }))
    {
        let mut o = obs.clone();
        o.reply = Reply::Error {
            class: GENERIC_ERROR.into(),
            desc: "boom".into(),
        };
        out.push(("unexpected error".into(), o));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    /// Along every generated sequence the model's own canonical observations are allowed,
    /// and the model stays small.
    #[test]
    fn canonical_observations_are_allowed(
        (init, ops, _) in PairMachine::sequential_strategy(SEQUENCE_LEN)
    ) {
        let mut m = Model::new(init.pair().clone());
        for op in &ops {
            let exp = m.apply(op);
            prop_assert!(!exp.outcomes.is_empty());
            prop_assert!(!exp.may_time_out(), "generated op may time out: {}", op);
            prop_assert!(exp.refused().is_none());
            let obs = m.canonical_observation(op);
            if let Err(v) = m.check(op, &obs) {
                return Err(TestCaseError::fail(format!("{v}\nops: {ops:?}\nobs: {obs:?}")));
            }
            m.observe(op, &obs);
            prop_assert!(m.possibilities() <= 8, "{} worlds", m.possibilities());
        }
    }

    /// Any allowed observation (any racing outcome, any snapshot) passes `check`, and narrowing
    /// the model to it keeps the following expectations consistent.
    #[test]
    fn sampled_observations_are_allowed(
        (init, ops, _) in PairMachine::sequential_strategy(SEQUENCE_LEN),
        seed in any::<u64>(),
    ) {
        let mut m = Model::new(init.pair().clone());
        for (i, op) in ops.iter().enumerate() {
            let exp = m.apply(op);
            prop_assert!(!exp.may_time_out());
            let obs = m.sample_observation(op, seed.wrapping_add(i as u64 * 0x9e37_79b9));
            if let Err(v) = m.check(op, &obs) {
                return Err(TestCaseError::fail(format!("{v}\nops: {ops:?}\nobs: {obs:?}")));
            }
            m.observe(op, &obs);
        }
    }

    /// `check` rejects observations that break an invariant.
    #[test]
    fn mutated_observations_are_rejected(
        (init, ops, _) in PairMachine::sequential_strategy(SEQUENCE_LEN)
    ) {
        let mut m = Model::new(init.pair().clone());
        for op in &ops {
            let exp = m.apply(op);
            let obs = m.canonical_observation(op);
            for (what, bad) in mutations(&m, op, &exp, &obs) {
                prop_assert!(
                    m.check(op, &bad).is_err(),
                    "accepted ({}) after {}: {:?}\nops: {:?}", what, op, bad, ops
                );
            }
            m.observe(op, &obs);
        }
    }

    /// Every prefix of a generated sequence is executable (shrinking by truncation stays valid),
    /// and the generator's model agrees with a replay from scratch.
    #[test]
    fn prefixes_stay_executable(
        (init, ops, _) in PairMachine::sequential_strategy(SEQUENCE_LEN)
    ) {
        for k in 0..=ops.len() {
            prop_assert!(sequence_is_executable(init.pair(), &ops[..k]), "prefix {} of {:?}", k, ops);
        }
        let mut m = Model::new(init.pair().clone());
        for op in &ops {
            prop_assert!(PairMachine::preconditions(&m, op));
            m = PairMachine::apply(m, op);
        }
        prop_assert!(m.waits_applied() <= super::strategy::MAX_WAITS);
        prop_assert!(m.migrations() <= super::strategy::MAX_MIGRATIONS);
    }

}

proptest! {
    // Serialization only; the op language itself is round-tripped 10,000 times in `scenario`.
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Generated sequences written as scenario files read back the same.
    #[test]
    fn generated_scenarios_round_trip(s in super::strategy::scenario()) {
        let toml = s.to_toml_string().unwrap();
        prop_assert_eq!(&crate::scenario::Scenario::from_toml_str(&toml).unwrap(), &s);
        let json = s.to_json_string().unwrap();
        prop_assert_eq!(crate::scenario::Scenario::from_json_str(&json).unwrap(), s);
    }
}

#[test]
fn lint_flags_unbounded_and_impossible_ops() {
    let s = crate::scenario::Scenario {
        purpose: "x".into(),
        pair: pair(),
        ops: vec![
            Op::CheckMemory {},
            Op::Hold {},
            migrate(),
            Op::WaitCompleted {},
        ],
    };
    let p = lint(&s);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].contains("cannot run"), "{p:?}");
    assert!(p[1].contains("timeout"), "{p:?}");
    let good = crate::scenario::Scenario {
        purpose: "hold, passes, release, converge".into(),
        pair: pair(),
        ops: vec![
            Op::Hold {},
            migrate(),
            Op::WaitPasses { n: 3 },
            Op::Release {},
            Op::WaitCompleted {},
            Op::CheckMemory {},
            Op::CheckDestinationRuns {},
        ],
    };
    assert_eq!(lint(&good), Vec::<String>::new());
}

#[test]
fn run_state_and_status_are_read_one_after_the_other() {
    // query-status first, then query-migrate: the status may be newer than the run state.
    let (m, op, mut obs) = stop_destination_after_migrate();
    shows_completed(&mut obs.source, RunState::Running);
    m.check(&op, &obs).unwrap();
    // The other way round is not possible.
    obs.source.run_state = Some(RunState::Postmigrate);
    obs.source.status = Some(S::Active);
    obs.source.events.pop();
    let v = m.check(&op, &obs).unwrap_err();
    assert!(v.message.contains("run state"), "{v}");
}

#[test]
fn cancel_after_failed_keeps_failed() {
    let mut m = Model::new(pair());
    run_all(
        &mut m,
        &[
            Op::Kill {
                side: Side::Destination,
            },
            migrate(),
            wait_src(S::Failed),
        ],
    );
    let (e, _) = run(&mut m, Op::Cancel {});
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert_eq!(e.statuses(Side::Source), set(&[S::Failed]));
    assert_eq!(e.outcomes[0].guest_owner, GuestOwner::Source);
}

#[test]
fn cancel_in_pre_switchover_resumes_the_source() {
    let mut m = Model::new(pair());
    run_all(
        &mut m,
        &[src_pbs(true), migrate(), wait_src(S::PreSwitchover)],
    );
    let (e, _) = run(&mut m, Op::Cancel {});
    assert!(e.statuses(Side::Source).contains(&S::Cancelling));
    let (e, _) = run(&mut m, wait_src(S::Cancelled));
    assert_eq!(e.run_states(Side::Source), [RunState::Running].into());
}

#[test]
fn released_hold_with_pause_before_switchover_completes_after_continue() {
    let mut m = Model::new(pair());
    run_all(&mut m, &pbs_held_two_passes());
    run_all(
        &mut m,
        &[
            Op::Release {},
            wait_src(S::PreSwitchover),
            Op::Continue {
                state: S::PreSwitchover,
            },
        ],
    );
    let (e, _) = run(&mut m, Op::WaitCompleted {});
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    run(&mut m, Op::CheckMemory {});
}

#[test]
fn cont_on_a_paused_destination_after_completion_runs_it() {
    let mut m = Model::new(pair());
    run_all(&mut m, &[migrate(), Op::WaitCompleted {}]);
    let (e, _) = run(
        &mut m,
        Op::Cont {
            side: Side::Destination,
        },
    );
    assert_eq!(e.run_states(Side::Destination), [RunState::Running].into());
    assert_eq!(e.outcomes[0].guest_owner, GuestOwner::Destination);
    let (e, _) = run(
        &mut m,
        Op::Stop {
            side: Side::Destination,
        },
    );
    assert_eq!(e.run_states(Side::Destination), [RunState::Paused].into());
    assert!(m.expect(&Op::CheckMemory {}).refused().is_some(), "it ran");
}

#[test]
fn rejects_stop_while_held_and_resume_of_a_held_destination() {
    let mut m = held_model();
    let op = Op::WaitPasses { n: 4 };
    let mut obs = planned(&mut m, &op);
    obs.source.events.push(Event::Stop);
    let v = m.check(&op, &obs).unwrap_err();
    assert!(v.message.contains("STOP"), "{v}");
    let mut obs = m.canonical_observation(&op);
    obs.destination.events.push(Event::Resume);
    let v = m.check(&op, &obs).unwrap_err();
    assert!(v.message.contains("RESUME"), "{v}");
}

#[test]
fn events_off_means_no_event_checks() {
    let mut m = Model::new(PairSpec {
        events: false,
        ..pair()
    });
    let (_, obs) = run(&mut m, migrate());
    assert!(obs.source.events.is_empty());
    let (_, obs) = run(&mut m, Op::WaitCompleted {});
    assert!(obs.destination.events.is_empty());
}

#[test]
fn violation_messages_are_one_readable_line() {
    let mut m = Model::new(pair());
    run(&mut m, migrate());
    m.apply(&Op::Cancel {});
    let mut obs = m.canonical_observation(&Op::Cancel {});
    obs.source.status = Some(S::Failed);
    obs.source.events = vec![Event::Migration { status: S::Failed }];
    let v = m.check(&Op::Cancel {}, &obs).unwrap_err();
    let line = v.to_string();
    assert!(!line.contains('\n'));
    assert!(line.starts_with("after `cancel`: "), "{line}");
    assert!(line.contains("saw failed"), "{line}");
    println!("{line}");
}

#[test]
fn slow_passes_may_time_out() {
    let mut m = Model::new(PairSpec {
        memory: Size::mib(128),
        ..PairSpec::default()
    });
    run_all(
        &mut m,
        &[
            Op::SetParameters {
                side: Side::Source,
                downtime_limit: Some(2_000_000),
                max_bandwidth: Some(Size(3_000_000)),
                avail_switchover_bandwidth: None,
                switchover_hold: None,
                multifd_channels: None,
                xbzrle_cache_size: None,
                max_postcopy_bandwidth: None,
            },
            Op::Hold {},
            migrate(),
        ],
    );
    assert!(m.expect(&Op::WaitPasses { n: 2 }).may_time_out());
    run(&mut m, Op::Release {});
    assert!(
        m.expect(&Op::WaitCompleted {}).may_time_out(),
        "3 MB/s over 128 MiB is not bounded, however long the downtime"
    );
}

#[test]
fn expectations_serialize_for_transcripts() {
    let mut m = Model::new(pair());
    run(&mut m, Op::Hold {});
    let e = m.apply(&migrate());
    let v = serde_json::to_value(&e).unwrap();
    let o = &v["outcomes"][0];
    assert_eq!(o["reply"], "ok");
    assert_eq!(o["source"]["alive"], "yes");
    assert_eq!(o["source"]["snapshots"][0]["status"], "setup");
    assert_eq!(o["hold"], true);
    assert!(o.get("world").is_none());
    let bad = m.apply(&migrate());
    let v = serde_json::to_value(&bad).unwrap();
    assert_eq!(
        v["outcomes"][0]["reply"]["error"]["contains"],
        ERR_IN_PROGRESS
    );
}

#[test]
fn hold_racing_the_switchover_allows_a_stopping_source() {
    // The source decided to switch over just before the hold arrived: the guest is stopped,
    // the status still active; the migration completes anyway.
    let mut m = Model::new(pair());
    run(&mut m, migrate());
    let op = Op::Hold {};
    let mut obs = planned(&mut m, &op);
    obs.source.status = Some(S::Active);
    obs.source.run_state = Some(RunState::FinishMigrate);
    obs.source.events = vec![Event::Migration { status: S::Active }];
    obs.source.dirty_sync_count = Some(1);
    obs.source.events.push(Event::MigrationPass { pass: 1 });
    m.step(&op, &obs).unwrap();
    let e = m.apply(&Op::WaitCompleted {});
    assert!(
        e.replies().contains(&&ExpectedReply::Ok),
        "{:?}",
        e.replies()
    );
}

#[test]
fn the_documented_example_scenario_parses_and_is_bounded() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/scenarios.md"))
        .unwrap();
    let start = doc.find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let s = crate::scenario::Scenario::from_toml_str(&doc[start..end]).unwrap();
    assert_eq!(s.ops.len(), 8);
    assert_eq!(lint(&s), Vec::<String>::new());
}

#[test]
fn destination_still_loading_after_the_source_completed() {
    let mut m = Model::new(pair());
    run(&mut m, migrate());
    // A `stop` on the destination races with the end of the migration: the source says
    // completed, the destination still loads.
    let op = Op::Stop {
        side: Side::Destination,
    };
    let mut obs = planned(&mut m, &op);
    shows_completed(&mut obs.source, RunState::Postmigrate);
    obs.destination.status = Some(S::Active);
    obs.destination.events = vec![Event::Migration { status: S::Active }];
    m.step(&op, &obs).unwrap();
    // Not yet comparable: the destination may still be loading.
    assert!(m.expect(&Op::CheckMemory {}).refused().is_some());
    let (e, _) = run(&mut m, Op::WaitCompleted {});
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    let (e, _) = run(&mut m, Op::CheckMemory {});
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
}
