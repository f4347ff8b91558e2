//! Shrinking a failing fuzz case to a short case that fails **every** time it is replayed.
//!
//! A candidate (the case with ops dropped) fails only sometimes when dropping an op turned a
//! deterministic order into a race (a `wait-passes` dropped before a `release`, a capped
//! postcopy bandwidth dropped). Accepting such a candidate because it happened to fail a few
//! times in a row is what made written cases replay 8 times in 10. So:
//!
//! - a candidate is accepted only when it fails [`FuzzOptions::reproduce`] + 2 runs in a row
//!   (the last timing-perturbed, as for counting a failure at all); a pass ends the runs at
//!   once, so a rejected candidate mostly costs one run;
//! - the smallest pair (16 MiB, one vCPU) is tried first, unless an op sets a bandwidth (drawn
//!   for the RAM size): every later run is quicker;
//! - the ops after the failing op are dropped (the run up to it is the same, so is the
//!   failure); the settings sent after a `migrate` (a hold, parameters, capabilities of the
//!   source) are moved before it, so the migration starts with them instead of racing them;
//!   then runs of ops are dropped, halving their length down to single ops, the last first;
//!   then pairs of ops that can only go together (each alone leaves a sequence the model
//!   would not generate); last, single settings are moved before their `migrate`; a round
//!   that accepts nothing runs once more (a candidate that nearly always fails may have
//!   passed its one run);
//! - the shrunk case is verified with [`FuzzOptions::verify`] more runs; when one passes, the
//!   case is a race: it is set aside and shrinking goes on from the case accepted before it
//!   (every case accepted so far failed every run it had), until a case passes its
//!   verification, or the first case is reached.

use std::time::Instant;

use crate::model::strategy::sequence_is_executable;
use crate::scenario::exec::{ExecError, ExecOptions, Executor};
use crate::scenario::{Op, PairSpec};

use super::{FuzzOptions, SLOW_OP_DELAY};

/// How one run of a case ended.
pub(super) enum Outcome {
    /// Every op (and the settling wait) judged allowed.
    Pass,
    /// The 1-based index of the op that failed (`ops.len() + 1`: the settling wait; 0: the
    /// launch) and the failure report.
    Fail(usize, String),
    /// The case could not run (a VMM did not start, a parameter is absent): why.
    CannotTest(String),
}

/// How many times a run that could not start is tried again before it counts: a VMM that
/// did not come up on a loaded machine says nothing about the case, and taking it for a
/// pass would set a case aside as a race.
const START_RETRIES: u32 = 2;

/// Runs `ops` on a fresh pair (again, up to [`START_RETRIES`] times, when it cannot run).
pub(super) fn run_case(pair: &PairSpec, ops: &[Op], exec: &ExecOptions) -> Outcome {
    let mut tries = 0;
    loop {
        match run_once(pair, ops, exec) {
            Outcome::CannotTest(why) if tries < START_RETRIES => {
                tries += 1;
                eprintln!("fuzz: shrink: a run could not start ({why}); trying again");
            }
            outcome => return outcome,
        }
    }
}

fn run_once(pair: &PairSpec, ops: &[Op], exec: &ExecOptions) -> Outcome {
    let mut ex = match Executor::launch(pair, exec) {
        Ok(ex) => ex,
        Err(e) => return Outcome::CannotTest(e.to_string()),
    };
    let result = ops
        .iter()
        .try_for_each(|op| ex.step(op).map(|_| ()))
        .and_then(|()| ex.finish());
    match result {
        Ok(()) => Outcome::Pass,
        Err(ExecError::Failed(f)) => Outcome::Fail(f.index, f.to_string()),
        Err(ExecError::CannotTest(m)) => Outcome::CannotTest(m),
    }
}

/// The failure message when `ops` fails again [`FuzzOptions::reproduce`] times at full speed
/// and once more with [`SLOW_OP_DELAY`] pauses; `None` when any run passes or cannot test.
pub(super) fn reproduces(pair: &PairSpec, ops: &[Op], opts: &FuzzOptions) -> Option<String> {
    let mut last = None;
    for _ in 0..opts.reproduce {
        match run_case(pair, ops, &opts.exec) {
            Outcome::Fail(_, m) => last = Some(m),
            _ => return None,
        }
    }
    let mut slow = opts.exec.clone();
    slow.op_delay = SLOW_OP_DELAY;
    match run_case(pair, ops, &slow) {
        Outcome::Fail(_, m) => Some(last.unwrap_or(m)),
        _ => None,
    }
}

/// A case that failed every run it had.
#[derive(Clone)]
struct Accepted {
    pair: PairSpec,
    ops: Vec<Op>,
    message: String,
    /// The failing op's index in the first run (see [`Outcome::Fail`]).
    index: usize,
}

struct Shrinker<'a> {
    opts: &'a FuzzOptions,
    deadline: Instant,
    /// Every case accepted, oldest first; the last is the current one.
    chain: Vec<Accepted>,
    /// Cases found to be races (a verification run passed): never accepted again.
    racy: Vec<(PairSpec, Vec<Op>)>,
    /// Whether [`Shrinker::smaller_pair`] was tried.
    pair_tried: bool,
}

/// The guest RAM a shrunk case is tried with (the smallest the generator draws).
const SMALLEST_MIB: u64 = 16;

impl Shrinker<'_> {
    fn current(&self) -> &Accepted {
        self.chain
            .last()
            .expect("the found case is never set aside")
    }

    fn in_time(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Accepts `cand` (on the current pair) when it is executable, not known racy, and
    /// fails the first run and [`reproduces`].
    fn try_accept(&mut self, cand: Vec<Op>, what: &str) -> bool {
        let pair = self.current().pair.clone();
        self.try_accept_on(pair, cand, what)
    }

    fn try_accept_on(&mut self, pair: PairSpec, cand: Vec<Op>, what: &str) -> bool {
        if cand.is_empty()
            || self.racy.iter().any(|(p, o)| *p == pair && *o == cand)
            || !sequence_is_executable(&pair, &cand)
        {
            return false;
        }
        let Outcome::Fail(index, message) = run_case(&pair, &cand, &self.opts.exec) else {
            return false;
        };
        if reproduces(&pair, &cand, self.opts).is_none() {
            eprintln!("fuzz: shrink: {what}: failed, then passed (a race; not taken)");
            return false;
        }
        eprintln!("fuzz: shrink: {what}: {} ops, fails every run", cand.len());
        self.chain.push(Accepted {
            pair,
            ops: cand,
            message,
            index,
        });
        true
    }

    /// The smallest pair (16 MiB, one vCPU), tried once (as soon as no op sets a bandwidth):
    /// quicker runs, and quicker passes
    /// under the default 128 MiB/s `max-bandwidth`.
    fn smaller_pair(&mut self) -> bool {
        if self.pair_tried {
            return false;
        }
        let cur = self.current().clone();
        // Bandwidth caps were drawn for this RAM size (a postcopy cap of a quarter of the
        // RAM per second): on a smaller guest they would mean something else.
        let caps = cur.ops.iter().any(|op| {
            matches!(op, Op::SetParameters { max_bandwidth, avail_switchover_bandwidth, max_postcopy_bandwidth, .. }
                if max_bandwidth.is_some() || avail_switchover_bandwidth.is_some() || max_postcopy_bandwidth.is_some())
        });
        if caps {
            return false;
        }
        self.pair_tried = true;
        let mut pair = cur.pair.clone();
        pair.memory = pair.memory.min(crate::scenario::Size::mib(SMALLEST_MIB));
        pair.vcpus = 1;
        if pair == cur.pair {
            return false;
        }
        let what = format!("pair {} MiB, {} vCPU", pair.memory.0 >> 20, pair.vcpus);
        self.try_accept_on(pair, cur.ops, &what)
    }

    /// One greedy round over the current case; whether a candidate was accepted.
    fn round(&mut self) -> bool {
        if self.smaller_pair() {
            return true;
        }
        // The ops after the failing one never ran: the same run fails the same way.
        let cur = self.current().clone();
        if cur.index > 0 && cur.index < cur.ops.len() {
            let cand = cur.ops[..cur.index].to_vec();
            if self.try_accept(cand, &format!("ops after op {} dropped", cur.index)) {
                return true;
            }
        }
        // Every setting made after a `migrate` moved before it, at once: the migration
        // then starts with them instead of racing them (a hold sent while an un-held
        // migration may be converging).
        if let Some(cand) = settings_first(&cur.ops, None) {
            if self.try_accept(cand, "settings moved before `migrate`") {
                return true;
            }
        }
        // Runs of ops, halving their length, the last run first (a later op depends on the
        // earlier ones, not the reverse): short cases in few accepted steps.
        let mut changed = false;
        let mut blocked = Vec::new();
        let mut size = (self.current().ops.len() / 2).max(1);
        loop {
            let mut end = self.current().ops.len();
            while end > 0 && self.in_time() {
                let start = end.saturating_sub(size);
                let mut cand = self.current().ops.clone();
                let gone: Vec<Op> = cand.drain(start..end).collect();
                let what = match &gone[..] {
                    [op] => format!("op {} `{op}` dropped", start + 1),
                    _ => format!("ops {}..={} dropped", start + 1, end),
                };
                if !sequence_is_executable(&self.current().pair, &cand) {
                    if size == 1 {
                        blocked.push(start);
                    }
                } else if self.try_accept(cand, &what) {
                    changed = true;
                    blocked.clear();
                }
                end = start;
            }
            if size == 1 || !self.in_time() {
                break;
            }
            size /= 2;
        }
        if changed {
            return true;
        }
        // Pairs of ops that only go together: each alone cannot be dropped.
        for (a, &j) in blocked.iter().enumerate() {
            for &i in &blocked[a + 1..] {
                if !self.in_time() {
                    return false;
                }
                // `blocked` runs from the last op down: i < j.
                let mut cand = self.current().ops.clone();
                let second = cand.remove(j);
                let first = cand.remove(i);
                let what = format!("ops {} `{first}` and {} `{second}` dropped", i + 1, j + 1);
                if self.try_accept(cand, &what) {
                    return true;
                }
            }
        }
        // One setting at a time moved before the `migrate` it follows.
        let ops = self.current().ops.clone();
        for i in 0..ops.len() {
            if !self.in_time() {
                return false;
            }
            if let Some(cand) = settings_first(&ops, Some(i)) {
                if self.try_accept(cand, &format!("op {} `{}` moved earlier", i + 1, ops[i])) {
                    return true;
                }
            }
        }
        false
    }

    /// Whether the current case fails [`FuzzOptions::verify`] more runs; says how the first
    /// run that did not fail ended.
    fn verified(&self) -> bool {
        let cur = self.current();
        (1..=self.opts.verify).all(|run| {
            let how = match run_case(&cur.pair, &cur.ops, &self.opts.exec) {
                Outcome::Fail(..) => return true,
                Outcome::Pass => "passed".to_string(),
                Outcome::CannotTest(why) => format!("could not run: {why}"),
            };
            eprintln!(
                "fuzz: shrink: verification run {run} of {} of the {}-op case {how}",
                self.opts.verify,
                cur.ops.len()
            );
            false
        })
    }
}

/// Whether `op` sets something on the source that a migration started after it would use.
fn is_setting(op: &Op) -> bool {
    match op {
        Op::Hold {} => true,
        Op::SetParameters { side, .. }
        | Op::SetCapabilities { side, .. }
        | Op::SetAutoConverge { side, .. }
        | Op::SetThrottle { side, .. } => *side == crate::scenario::Side::Source,
        _ => false,
    }
}

/// `ops` with the settings after a `migrate` (only op `only`, if given) moved before the
/// `migrate` they follow; `None` when nothing moves.
fn settings_first(ops: &[Op], only: Option<usize>) -> Option<Vec<Op>> {
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    let mut migrate = None;
    let mut moved = false;
    for (i, op) in ops.iter().enumerate() {
        match (migrate, op) {
            (_, Op::Migrate { .. }) => {
                migrate = Some(out.len());
                out.push(op.clone());
            }
            (Some(j), _) if is_setting(op) && only.is_none_or(|k| k == i) => {
                out.insert(j, op.clone());
                migrate = Some(j + 1);
                moved = true;
            }
            _ => out.push(op.clone()),
        }
    }
    moved.then_some(out)
}

/// Shrinks the found case `ops` (it failed and [`reproduces`]) within
/// [`FuzzOptions::max_shrink_time`] (the verification of the last case may take longer);
/// returns the shrunk case (its pair may be smaller) and its failure.
pub(super) fn minimize(
    pair: &PairSpec,
    ops: Vec<Op>,
    message: String,
    opts: &FuzzOptions,
) -> (PairSpec, Vec<Op>, String) {
    let index = match message.strip_prefix("op ") {
        Some(rest) => rest
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        None => 0,
    };
    let mut s = Shrinker {
        opts,
        deadline: Instant::now() + opts.max_shrink_time,
        chain: vec![Accepted {
            pair: pair.clone(),
            ops,
            message,
            index,
        }],
        racy: Vec::new(),
        pair_tried: false,
    };
    loop {
        // A round that accepts nothing runs once more: a candidate that fails nearly every
        // run may have passed the one run that rejected it.
        let mut second_chance = true;
        while s.in_time() {
            if s.round() {
                second_chance = true;
            } else if std::mem::take(&mut second_chance) {
                eprintln!("fuzz: shrink: nothing accepted in a round; one more round");
            } else {
                break;
            }
        }
        if s.chain.len() == 1 || s.verified() {
            break;
        }
        let racy = s.chain.pop().expect("more than one case");
        eprintln!(
            "fuzz: shrink: the {}-op case passed a verification run (a race): back to {} ops",
            racy.ops.len(),
            s.current().ops.len()
        );
        s.racy.push((racy.pair, racy.ops));
    }
    let cur = s.chain.pop().expect("the found case");
    (cur.pair, cur.ops, cur.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Capability, Side};

    fn migrate() -> Op {
        Op::Migrate { transport: None }
    }

    #[test]
    fn settings_after_migrate_move_before_it() {
        let params = Op::no_parameters(Side::Source);
        let dst = Op::set_capability(Side::Destination, Capability::PostcopyRam, true);
        let wait = Op::WaitPasses { n: 2 };
        let ops = vec![
            migrate(),
            Op::Hold {},
            wait.clone(),
            params.clone(),
            dst.clone(),
            Op::Release {},
        ];
        let all = settings_first(&ops, None).expect("settings move");
        assert_eq!(
            all,
            vec![
                Op::Hold {},
                params.clone(),
                migrate(),
                wait.clone(),
                dst.clone(),
                Op::Release {}
            ]
        );
        let one = settings_first(&ops, Some(3)).expect("op 4 moves");
        assert_eq!(
            one,
            vec![
                params.clone(),
                migrate(),
                Op::Hold {},
                wait.clone(),
                dst.clone(),
                Op::Release {}
            ]
        );
        // Not a setting (op 3), or a destination setting (op 5): nothing moves.
        assert_eq!(settings_first(&ops, Some(2)), None);
        assert_eq!(settings_first(&ops, Some(4)), None);
    }

    #[test]
    fn settings_before_any_migrate_stay() {
        let ops = vec![Op::Hold {}, migrate(), Op::WaitPasses { n: 1 }];
        assert_eq!(settings_first(&ops, None), None);
        // With two migrations, a setting goes before the one it follows.
        let ops = vec![migrate(), Op::Cancel {}, migrate(), Op::Hold {}];
        assert_eq!(
            settings_first(&ops, None),
            Some(vec![migrate(), Op::Cancel {}, Op::Hold {}, migrate()])
        );
    }
}
