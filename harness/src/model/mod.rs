//! The reference model: a pure state machine of one source/destination pair that says, after
//! each [`Op`], which observations are allowed.
//!
//! Protocol for the executor, per op:
//! 1. `let exp = model.apply(&op);` — if [`Expectation::refused`] is `Some`, do not perform the op
//!    and report [`Reply::Refused`];
//! 2. perform the op, record an [`Observation`]: the reply, then the destination and then the
//!    source (alive; `query-status`, then `query-migrate` status and `dirty-sync-count`; the
//!    events that arrived up to that reply, since the previous observation);
//! 3. `model.check(&op, &obs)?` judges it; 4. `model.observe(&op, &obs)` narrows the model to what
//!    was seen (races resolved) and records event history. [`Model::step`] does 3 and 4.
//!
//! The model is a set of concrete worlds: a race (the migration completing just before a
//! `cancel`) gives one [`Outcome`] per way it may have gone; an observation must match one.
//! Invariants checked on every observation, whatever the outcomes say: MIGRATION events follow
//! the status machine ([`legal_transition`]), MIGRATION_PASS counts up by one, `dirty-sync-count`
//! never decreases within a migration, the last MIGRATION event agrees with the status, no
//! `completed` while the hold is set, never both sides running the guest unless the test
//! itself `cont`ed a post-migrate source.

pub mod auto_converge;
mod expect;
pub mod focus;
mod lint;
pub mod multifd;
pub mod postcopy_gen;
mod status;
pub mod strategy;
mod types;
mod world;

#[cfg(test)]
mod tests;

use crate::scenario::{MigrationStatus, Op, PairSpec, Side};

pub use expect::{
    Alive, Expectation, ExpectedReply, GuestOwner, Outcome, SideExpect, Snapshot, Violation,
    ERR_DOWNTIME_LIMIT, ERR_IN_PROGRESS, ERR_NOT_EXPECTED_STATE, GENERIC_ERROR,
};
pub use lint::lint;
pub use types::{
    Capabilities, Event, Observation, Parameters, Reply, RunState, SideObservation,
    ASSUMED_LINK_BANDWIDTH, MAX_DOWNTIME_LIMIT_MS,
};

use world::World;

use status::{event_path, incoming_status_hidden};
pub use status::{
    legal_transition, reachable, wait_gives_up, ERR_POSTCOPY_NOT_ENABLED, ERR_POSTCOPY_NOT_STARTED,
    STATUSES,
};

use MigrationStatus as S;

/// Where the last MIGRATION event left a side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Last {
    /// Fresh process: the next event must start from `none`.
    Fresh,
    /// Events were off: anything may come next.
    Unknown,
    At(MigrationStatus),
}

/// What earlier observations fixed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct History {
    src: Last,
    dst: Last,
    /// Last MIGRATION_PASS of the current migration (0 = none yet).
    last_pass: u64,
    /// Highest dirty-sync-count seen in the current migration.
    last_count: u64,
    /// Last status `query-migrate` showed, per side.
    src_seen: Option<MigrationStatus>,
    dst_seen: Option<MigrationStatus>,
}

#[derive(Clone, Debug)]
struct Pending {
    op: Op,
    expectation: Expectation,
    before: Vec<World>,
}

/// The reference model of one migration pair.
#[derive(Clone, Debug)]
pub struct Model {
    pair: PairSpec,
    worlds: Vec<World>,
    history: History,
    pending: Option<Pending>,
    ops: u32,
    waits: u32,
}

fn dedup<T: PartialEq>(v: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

impl Model {
    /// A freshly launched pair: source running with no migration, destination waiting for
    /// incoming, default parameters, `events` as the pair spec says.
    pub fn new(pair: PairSpec) -> Model {
        let w = World::initial(&pair);
        Model {
            pair,
            worlds: vec![w],
            history: History {
                src: Last::Fresh,
                dst: Last::Fresh,
                last_pass: 0,
                last_count: 0,
                src_seen: None,
                dst_seen: None,
            },
            pending: None,
            ops: 0,
            waits: 0,
        }
    }

    /// The pair spec.
    pub fn pair(&self) -> &PairSpec {
        &self.pair
    }

    /// Ops applied so far.
    pub fn ops_applied(&self) -> u32 {
        self.ops
    }

    /// Waits applied so far.
    pub fn waits_applied(&self) -> u32 {
        self.waits
    }

    /// How many concrete worlds the model still considers possible.
    pub fn possibilities(&self) -> usize {
        self.worlds.len()
    }

    /// Migrations started so far (the most any world says).
    pub fn migrations(&self) -> u32 {
        self.worlds.iter().map(|w| w.migrations).max().unwrap_or(0)
    }

    /// The source's switchover-hold parameter, if all worlds agree.
    pub fn hold(&self) -> Option<bool> {
        let v = dedup(self.worlds.iter().map(|w| w.src.params.switchover_hold));
        (v.len() == 1).then(|| v[0])
    }

    /// The parameters of `side`, if all worlds agree.
    pub fn parameters(&self, side: Side) -> Option<Parameters> {
        let v = dedup(self.worlds.iter().map(|w| match side {
            Side::Source => w.src.params,
            Side::Destination => w.dst.params,
        }));
        (v.len() == 1).then(|| v[0])
    }

    /// The capabilities of `side`, if all worlds agree.
    pub fn capabilities(&self, side: Side) -> Option<Capabilities> {
        let v = dedup(self.worlds.iter().map(|w| match side {
            Side::Source => w.src.caps,
            Side::Destination => w.dst.caps,
        }));
        (v.len() == 1).then(|| v[0])
    }

    /// The wait that ends a scenario, so that where it settles is observed and judged too: a
    /// migration ending by itself (cancelling, failing, converging) is waited for; a held one
    /// must make two more passes without completing. `None` when nothing moves or the wait
    /// could time out.
    pub fn settling_op(&self) -> Option<Op> {
        use world::SrcPhase;
        let held = self.worlds.iter().all(|w| w.src_is_held());
        if held {
            let n = self.worlds.iter().map(|w| w.passes_min).min().unwrap_or(0) + 2;
            let op = Op::WaitPasses { n };
            return (!self.expect(&op).may_time_out()).then_some(op);
        }
        let ending =
            |f: fn(&SrcPhase) -> bool| self.worlds.iter().any(|w| w.src.alive && f(&w.src.phase));
        let op = if ending(|p| *p == SrcPhase::Cancelling) {
            Op::WaitStatus {
                side: Side::Source,
                status: S::Cancelled,
            }
        } else if ending(|p| matches!(p, SrcPhase::Failing { .. })) {
            Op::WaitStatus {
                side: Side::Source,
                status: S::Failed,
            }
        } else if ending(|p| {
            matches!(
                p,
                SrcPhase::Converging
                    | SrcPhase::SwitchingOver
                    | SrcPhase::Finishing
                    | SrcPhase::Postcopy
            )
        }) {
            Op::WaitCompleted {}
        } else {
            return None;
        };
        (!self.expect(&op).may_time_out()).then_some(op)
    }

    pub(crate) fn worlds(&self) -> &[World] {
        &self.worlds
    }

    /// Applies `op`: returns the observations allowed after it and moves the model on (to every
    /// world the op may lead to, until [`Model::observe`] narrows it).
    pub fn apply(&mut self, op: &Op) -> Expectation {
        let expectation = self.expect(op);
        let before = std::mem::take(&mut self.worlds);
        self.worlds = dedup(expectation.outcomes.iter().map(|o| o.world.clone()));
        self.pending = Some(Pending {
            op: op.clone(),
            expectation: expectation.clone(),
            before,
        });
        self.ops += 1;
        if op.is_wait() {
            self.waits += 1;
        }
        expectation
    }

    /// What `op` would be allowed to do now, without applying it.
    pub fn expect(&self, op: &Op) -> Expectation {
        let mut outcomes: Vec<Outcome> = Vec::new();
        for w in &self.worlds {
            for s in w.settlements() {
                for st in s.apply(op, &self.pair) {
                    let o = st.world.outcome(st.reply);
                    if !outcomes.contains(&o) {
                        outcomes.push(o);
                    }
                }
            }
        }
        Expectation { outcomes }
    }

    /// The expectation of the last applied op.
    pub fn expectation(&self) -> Option<&Expectation> {
        self.pending.as_ref().map(|p| &p.expectation)
    }

    fn pending_for(&self, op: &Op) -> Result<&Pending, Violation> {
        self.pending
            .as_ref()
            .filter(|p| p.op == *op)
            .ok_or_else(|| Violation {
                op: op.to_string(),
                message: "the model has no expectation for this op (call apply first)".into(),
            })
    }

    /// Judges an observation of `op` (the op last given to [`Model::apply`]).
    pub fn check(&self, op: &Op, obs: &Observation) -> Result<(), Violation> {
        let pending = self.pending_for(op)?;
        let violation = |message: String| Violation {
            op: op.to_string(),
            message,
        };
        let exp = &pending.expectation;
        if exp.held_throughout() {
            let completed_event = obs.source.events.contains(&Event::Migration {
                status: S::Completed,
            });
            if obs.source.status == Some(S::Completed) || completed_event {
                return Err(violation(
                    "source completed while switchover-hold is set (expected status in {setup, active})"
                        .into(),
                ));
            }
        }
        if exp.held_throughout()
            && *op != (Op::Stop { side: Side::Source })
            // QEMU's `cont` on a running guest sends STOP then RESUME and changes nothing.
            && *op != (Op::Cont { side: Side::Source })
            && obs.source.events.contains(&Event::Stop)
        {
            return Err(violation(
                "STOP on the source while switchover is held (no switchover may start)".into(),
            ));
        }
        if obs.destination.events.contains(&Event::Resume)
            && !exp.outcomes.iter().any(|o| {
                o.destination
                    .snapshots
                    .iter()
                    .any(|s| s.run_state == RunState::Running)
            })
        {
            return Err(violation(
                "RESUME on the destination although it may not run the guest now".into(),
            ));
        }
        self.advance_history(pending, obs).map_err(violation)?;
        auto_converge::check(&self.worlds, obs).map_err(violation)?;
        let running = |o: &SideObservation| o.alive && o.run_state == Some(RunState::Running);
        if running(&obs.source) && running(&obs.destination) && !exp.allows_both_running() {
            let owner = exp.outcomes[0].guest_owner;
            return Err(violation(format!(
                "both source and destination run the guest (expected it on: {owner:?})"
            )));
        }
        if exp.outcomes.iter().any(|o| o.mismatch(obs).is_none()) {
            return Ok(());
        }
        let same_reply: Vec<&Outcome> = exp
            .outcomes
            .iter()
            .filter(|o| o.reply.matches(&obs.reply))
            .collect();
        let best = same_reply.first().copied().unwrap_or(&exp.outcomes[0]);
        let mut msg = best.mismatch(obs).expect("no outcome matched");
        // A status no outcome allows: name them all.
        for side in Side::ALL {
            let so = obs.side(side);
            let Some(st) = so.status.filter(|_| so.alive) else {
                continue;
            };
            let allowed: std::collections::BTreeSet<MigrationStatus> = same_reply
                .iter()
                .filter(|o| o.side(side).alive != Alive::No)
                .flat_map(|o| o.side(side).statuses())
                .collect();
            if !same_reply.is_empty() && !allowed.is_empty() && !allowed.contains(&st) {
                msg = format!(
                    "expected {side} status in {}, saw {st}",
                    expect::fmt_set(&allowed)
                );
                break;
            }
        }
        if exp.outcomes.len() > 1 {
            let replies: Vec<String> = exp.replies().iter().map(|r| r.to_string()).collect();
            msg.push_str(&format!(
                " ({} possible outcomes; replies: {})",
                exp.outcomes.len(),
                replies.join(" | ")
            ));
        }
        Err(violation(msg))
    }

    /// Records what was observed after `op`: keeps the worlds that match it and the event
    /// history. Best effort after a violation (keeps every world then).
    pub fn observe(&mut self, op: &Op, obs: &Observation) {
        let Ok(pending) = self.pending_for(op).cloned() else {
            return;
        };
        match self.advance_history(&pending, obs) {
            Ok(h) => self.history = h,
            Err(_) => {
                self.history.src = Last::Unknown;
                self.history.dst = Last::Unknown;
                if let Some(c) = obs.source.dirty_sync_count {
                    self.history.last_count = c;
                }
            }
        }
        let matching: Vec<World> = pending
            .expectation
            .outcomes
            .iter()
            .filter(|o| o.mismatch(obs).is_none())
            .map(|o| o.world.narrowed(obs))
            .collect();
        if !matching.is_empty() {
            self.worlds = dedup(matching);
        }
        self.pending = None;
    }

    /// [`Model::check`] then [`Model::observe`].
    pub fn step(&mut self, op: &Op, obs: &Observation) -> Result<(), Violation> {
        let r = self.check(op, obs);
        self.observe(op, obs);
        r
    }

    fn advance_history(&self, pending: &Pending, obs: &Observation) -> Result<History, String> {
        let mut h = self.history.clone();
        if matches!(pending.op, Op::Migrate { .. }) && obs.reply == Reply::Ok {
            h.last_pass = 0;
            h.last_count = 0;
        }
        if pending.op == (Op::RestartDestination {}) {
            h.dst = Last::Fresh;
            h.dst_seen = None;
        }
        let new_migration = matches!(pending.op, Op::Migrate { .. }) && obs.reply == Reply::Ok;
        for side in Side::ALL {
            let so = obs.side(side);
            let seen = match side {
                Side::Source => &mut h.src_seen,
                Side::Destination => &mut h.dst_seen,
            };
            if let (true, Some(now)) = (so.alive, so.status) {
                let unchanged_none = *seen == Some(S::None) && now == S::None;
                if unchanged_none || seen.is_some_and(|b| incoming_status_hidden(side, now, b)) {
                    continue;
                }
                if let Some(before) = *seen {
                    // A destination takes one incoming migration, from `none`.
                    let starts = new_migration || (side == Side::Destination && before == S::None);
                    if !reachable(side, before, now, starts) {
                        return Err(format!(
                            "{side} status went from {before} to {now}, which the status machine cannot do"
                        ));
                    }
                }
                *seen = Some(now);
            }
        }
        let before = &pending.before;
        let any_pbs = before.iter().any(|w| w.src.caps.pause_before_switchover);
        let all_pbs = before.iter().all(|w| w.src.caps.pause_before_switchover);
        for side in Side::ALL {
            let so = obs.side(side);
            for ev in &so.events {
                match ev {
                    Event::Migration { status } => {
                        let last = match side {
                            Side::Source => &mut h.src,
                            Side::Destination => &mut h.dst,
                        };
                        let from = match *last {
                            Last::Fresh => Some(S::None),
                            Last::Unknown => None,
                            Last::At(s) => Some(s),
                        };
                        if let Some(from) = from {
                            // Repeated events QEMU 7.2 emits: its multifd threads set `failed`
                            // with the status they read, which may already be `failed`; a
                            // second `migrate_cancel` while `cancelling` sets `cancelling`
                            // again (`migrate_fd_cancel` accepts any running status).
                            let repeat =
                                from == *status && matches!(from, S::Failed | S::Cancelling);
                            if !repeat && !legal_transition(side, from, *status) {
                                return Err(format!(
                                    "{side} MIGRATION event {status} after {from} is not a legal transition"
                                ));
                            }
                            if side == Side::Source {
                                if *status == S::PreSwitchover && !any_pbs {
                                    return Err("source MIGRATION event pre-switchover without pause-before-switchover".into());
                                }
                                if from == S::Active && *status == S::Completed && all_pbs {
                                    return Err("source completed without pre-switchover although pause-before-switchover is set".into());
                                }
                            }
                        }
                        *last = Last::At(*status);
                    }
                    Event::MigrationPass { pass } if side == Side::Source => {
                        if *pass != h.last_pass + 1 {
                            return Err(format!(
                                "MIGRATION_PASS {pass} after {}: passes count up by one from 1",
                                h.last_pass
                            ));
                        }
                        h.last_pass = *pass;
                    }
                    _ => {}
                }
            }
        }
        if let Some(c) = obs.source.dirty_sync_count {
            if obs.source.alive && c < h.last_count {
                return Err(format!(
                    "source dirty-sync-count went back from {} to {c} within one migration",
                    h.last_count
                ));
            }
            h.last_count = h.last_count.max(c);
        }
        for side in Side::ALL {
            let so = obs.side(side);
            let events_on = before.iter().all(|w| match side {
                Side::Source => w.src.caps.events,
                Side::Destination => w.dst.caps.events,
            }) && pending
                .expectation
                .outcomes
                .iter()
                .all(|o| o.side(side).events);
            let last = match side {
                Side::Source => &mut h.src,
                Side::Destination => &mut h.dst,
            };
            if !events_on {
                *last = Last::Unknown;
                continue;
            }
            let (Some(st), true) = (so.status, so.alive) else {
                continue;
            };
            let seen = match *last {
                Last::Fresh => S::None,
                Last::Unknown => continue,
                Last::At(s) => s,
            };
            // A reply is a snapshot written after it was taken, so an event
            // emitted in between reaches the client first; and QEMU may also
            // set a status before sending its event. One step of skew either
            // way is allowed; anything else is a mismatch.
            let adjacent = st != S::None
                && seen != S::None
                && (legal_transition(side, st, seen) || legal_transition(side, seen, st));
            if st != seen && !adjacent && !incoming_status_hidden(side, st, seen) {
                return Err(format!(
                    "{side} status is {st} but its last MIGRATION event was {seen}"
                ));
            }
        }
        Ok(h)
    }

    /// An observation the model allows after `op` (its first outcome), with events that continue
    /// the history: an oracle self-check and a template for tests.
    pub fn canonical_observation(&self, op: &Op) -> Observation {
        self.observation_with(op, &mut |_| 0)
    }

    /// An allowed observation after `op` chosen by `seed`: any outcome, any snapshot (the same
    /// time for run state and status), dying processes dead or alive. For property tests of
    /// executors and of the model's narrowing.
    pub fn sample_observation(&self, op: &Op, seed: u64) -> Observation {
        let mut x = seed;
        let mut pick = |n: usize| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % n.max(1) as u64) as usize
        };
        let obs = self.observation_with(op, &mut pick);
        let running = |o: &SideObservation| o.alive && o.run_state == Some(RunState::Running);
        let allows_both = self
            .pending_for(op)
            .map(|p| p.expectation.allows_both_running())
            .unwrap_or(false);
        if running(&obs.source) && running(&obs.destination) && !allows_both {
            // Impossible when the destination is read before the source.
            return self.canonical_observation(op);
        }
        obs
    }

    fn observation_with(&self, op: &Op, pick: &mut dyn FnMut(usize) -> usize) -> Observation {
        let owned;
        let pending = match self.pending_for(op) {
            Ok(p) => p,
            Err(_) => {
                let mut m = self.clone();
                m.apply(op);
                owned = m.pending.expect("just applied");
                &owned
            }
        };
        let o = &pending.expectation.outcomes[pick(pending.expectation.outcomes.len())];
        let reply = o.reply.canonical();
        let restart = matches!(op, Op::Migrate { .. }) && reply == Reply::Ok;
        let (last_pass, last_count) = if restart {
            (0, 0)
        } else {
            (self.history.last_pass, self.history.last_count)
        };
        // The destination is observed first; once it completed (or runs postcopy), the source
        // is past switchover.
        let mut dst_done = false;
        let mut observe_side = |side: Side, dst_done: bool| {
            let e = o.side(side);
            let alive = match e.alive {
                Alive::Yes => true,
                Alive::No => false,
                Alive::Maybe => pick(2) == 1,
            };
            if !alive || e.snapshots.is_empty() {
                return SideObservation::dead();
            }
            let seen = match side {
                Side::Source => self.history.src_seen,
                Side::Destination if *op == (Op::RestartDestination {}) => None,
                Side::Destination => self.history.dst_seen,
            };
            let fits: Vec<Snapshot> = e
                .snapshots
                .iter()
                .copied()
                .filter(|s| seen.is_none_or(|b| reachable(side, b, s.status, restart)))
                .filter(|s| side == Side::Destination || !dst_done || past_switchover(s))
                .collect();
            let snap = if fits.is_empty() {
                e.snapshots[0]
            } else {
                fits[pick(fits.len())]
            };
            let last = match side {
                Side::Source => self.history.src,
                Side::Destination => {
                    if *op == (Op::RestartDestination {}) {
                        Last::Fresh
                    } else {
                        self.history.dst
                    }
                }
            };
            let mut events = Vec::new();
            if e.events {
                let from = match last {
                    Last::Fresh => Some(S::None),
                    Last::Unknown => None,
                    Last::At(s) => Some(s),
                };
                // Events of this op happened under the capabilities from before it.
                let pbs = pending
                    .before
                    .iter()
                    .all(|w| w.src.caps.pause_before_switchover);
                for status in event_path(side, from, snap.status, pbs) {
                    events.push(Event::Migration { status });
                }
            }
            let mut count = None;
            if side == Side::Source && matches!(snap.status, S::Active | S::Completed) {
                let c = e.min_passes.max(last_count).max(1);
                if e.events {
                    for pass in last_pass + 1..=c {
                        events.push(Event::MigrationPass { pass });
                    }
                }
                count = Some(c);
            }
            SideObservation {
                alive: true,
                status: Some(snap.status),
                run_state: Some(snap.run_state),
                dirty_sync_count: count,
                cpu_throttle: None,
                events,
            }
        };
        let destination = observe_side(Side::Destination, false);
        if o.world.dst_incoming() && destination.alive {
            // The destination enters postcopy-active only from the package the source sends
            // after it stopped its guest: as after `completed`, the source is past switchover.
            dst_done = matches!(destination.status, Some(S::Completed | S::PostcopyActive));
        }
        let source = observe_side(Side::Source, dst_done);
        Observation {
            reply,
            source,
            destination,
        }
    }
}

/// Whether a source snapshot can be seen after the destination completed the migration or
/// entered postcopy.
fn past_switchover(s: &Snapshot) -> bool {
    s.status != S::Setup && matches!(s.run_state, RunState::FinishMigrate | RunState::Postmigrate)
}
