//! Fuzzing: proptest-state-machine generates op sequences from the reference model
//! ([`PairMachine`]) and the executor runs each against a real pair, judging every
//! observation. A failing case is shrunk (bounded time, towards a case that fails every run:
//! `fuzz/shrink.rs`), written as a scenario file into the
//! failures folder, and reported with the command that replays it.
//!
//! `migtest fuzz --cases N --seed S` and the `fuzz_real` nextest case run this same code.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::test_runner::{
    Config, FileFailurePersistence, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
};

use crate::backend::Backend;
pub use crate::model::focus::Focus;
use crate::model::strategy::SEQUENCE_LEN;
use crate::scenario::exec::{
    failures_dir, optional_parameters, report, ExecError, ExecOptions, Executor,
};
use crate::scenario::Scenario;

mod shrink;
use shrink::{minimize, reproduces};

/// Settings of one fuzz run.
#[derive(Debug, Clone)]
pub struct FuzzOptions {
    /// Cases to generate; `None`: proptest's default (`PROPTEST_CASES`, else 256).
    pub cases: Option<u32>,
    /// RNG seed (ChaCha), so a run is reproducible.
    pub seed: u64,
    /// How to run each case.
    pub exec: ExecOptions,
    /// Upper bound on shrinking time (`fuzz/shrink.rs`; the verification of the shrunk case
    /// and a fallback from a race may take a few runs more).
    pub max_shrink_time: Duration,
    /// Regressions file (proptest `FileFailurePersistence::Direct`), replayed first.
    pub regressions: Option<PathBuf>,
    /// Where the shrunk failing case is written (default [`failures_dir`]).
    pub failures_dir: Option<PathBuf>,
    /// A name for the written file.
    pub label: String,
    /// Extra full-speed runs a failing case must also fail to count (default 1). It must
    /// also fail once more with the migration given [`SLOW_OP_DELAY`] to move on before every
    /// op: a failure that depends on an op arriving before the migration moved on is a
    /// race, reported but not shrunk, so that every written case replays the same way.
    pub reproduce: u32,
    /// Extra full-speed runs the shrunk case must fail before it is written (default 3); when
    /// one passes, the case is a race and the shrinker goes back to the case it shrank it
    /// from (see `fuzz/shrink.rs`).
    pub verify: u32,
    /// The feature generation is steered towards ([`Focus`]; default: none). Every op
    /// stays judged by the same model.
    pub focus: Focus,
}

/// In the timing-perturbed rerun of a failing case, how long a running migration is given
/// before each op to move on ([`ExecOptions::op_delay`](crate::scenario::exec::ExecOptions)).
pub const SLOW_OP_DELAY: Duration = Duration::from_millis(2500);

impl FuzzOptions {
    /// Builtin VMM, proptest's default case count, 60 s shrinking.
    pub fn new(seed: u64) -> FuzzOptions {
        FuzzOptions {
            cases: None,
            seed,
            exec: ExecOptions::builtin(),
            max_shrink_time: Duration::from_secs(60),
            regressions: None,
            failures_dir: None,
            label: "fuzz".into(),
            reproduce: 1,
            verify: 3,
            focus: Focus::All,
        }
    }
}

/// A passing fuzz run.
#[derive(Debug, Clone)]
pub struct FuzzReport {
    /// Cases run (executed against VMMs).
    pub cases: u32,
    /// Cases skipped because the backend lacks a capability they need.
    pub skipped: u32,
    /// Failures that did not reproduce on a second run (printed, not shrunk).
    pub flaky: u32,
    /// Wall time.
    pub elapsed: Duration,
}

/// A failing fuzz run: the shrunk case and how to replay it.
#[derive(Debug, Clone)]
pub struct FuzzFailure {
    /// The shrunk case.
    pub scenario: Scenario,
    /// Where it was written.
    pub path: PathBuf,
    /// The failure of the shrunk case.
    pub message: String,
    /// `migtest replay ...`.
    pub replay_command: String,
    /// Cases run before (and including) the first failure, and shrink steps run.
    pub runs: u32,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for FuzzFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "fuzz case failed; shrunk to {} ops, written to {}",
            self.scenario.ops.len(),
            self.path.display()
        )?;
        writeln!(f, "replay: {}", self.replay_command)?;
        write!(f, "{}", self.message)
    }
}

/// The replay command for a scenario file run with `exec`.
pub fn replay_command(path: &std::path::Path, exec: &ExecOptions) -> String {
    let mut cmd = format!("migtest replay {}", path.display());
    if let Backend::Qemu { binary, .. } = &exec.src_backend {
        cmd.push_str(&format!(" --vmm qemu --qemu {}", binary.display()));
    }
    let mut it = exec.src_extra.iter();
    while let Some(a) = it.next() {
        if a == "-x-fault" {
            if let Some(name) = it.next() {
                cmd.push_str(&format!(" --x-fault {name}"));
            }
        }
    }
    cmd
}

/// Runs the fuzzer. `Err` carries the shrunk failing case (already written out).
pub fn fuzz(opts: &FuzzOptions) -> Result<FuzzReport, Box<FuzzFailure>> {
    let start = Instant::now();
    let mut config = Config::default();
    if let Some(c) = opts.cases {
        config.cases = c;
    }
    // No proptest shrinking: it would accept a candidate that failed a few runs by chance
    // and keep no way back; [`minimize`] shrinks towards cases that fail every time.
    config.max_shrink_iters = 0;
    config.max_global_rejects = 100_000;
    config.failure_persistence = opts.regressions.as_ref().map(|p| {
        let leaked: &'static str = Box::leak(p.display().to_string().into_boxed_str());
        Box::new(FileFailurePersistence::Direct(leaked)) as Box<_>
    });
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&opts.seed.to_le_bytes());
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let runs = AtomicU32::new(0);
    let skipped = AtomicU32::new(0);
    let flaky = AtomicU32::new(0);
    // Parameters a VMM turned out to lack (QEMU: switchover-hold): cases that set them are
    // skipped unlaunched.
    let absent = Mutex::new(Vec::<(crate::scenario::Side, &'static str)>::new());
    let cannot = Mutex::new(None::<String>);
    let strategy = opts.focus.strategy(SEQUENCE_LEN);
    let result = runner.run(&strategy, |(init, ops, _seen)| {
        if cannot.lock().unwrap().is_some() {
            return Ok(());
        }
        let scenario = Scenario {
            purpose: String::new(),
            pair: init.pair().clone(),
            ops: ops.clone(),
        };
        let optional = optional_parameters(&scenario);
        if optional.iter().any(|p| absent.lock().unwrap().contains(p)) {
            skipped.fetch_add(1, Ordering::Relaxed);
            return Err(TestCaseError::reject("needs a parameter the VMM lacks"));
        }
        let mut ex = match Executor::launch(&scenario.pair, &opts.exec) {
            Ok(ex) => ex,
            Err(e) => {
                *cannot.lock().unwrap() = Some(e.to_string());
                return Ok(());
            }
        };
        let missing = ex.missing_parameters(&scenario);
        if !missing.is_empty() {
            absent.lock().unwrap().extend(missing);
            skipped.fetch_add(1, Ordering::Relaxed);
            return Err(TestCaseError::reject("needs a parameter the VMM lacks"));
        }
        runs.fetch_add(1, Ordering::Relaxed);
        let mut failure = None;
        // proptest-state-machine's counter of ops seen (`seen`) is left alone: it only
        // guides proptest's shrinking, which is off, and a non-zero count makes it panic
        // when it hands back the failing case.
        for op in &ops {
            match ex.step(op) {
                Ok(_) => {}
                Err(ExecError::Failed(f)) => {
                    failure = Some(f.to_string());
                    break;
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        if failure.is_none() {
            if let Err(e) = ex.finish() {
                failure = Some(e.to_string());
            }
        }
        drop(ex);
        let Some(first) = failure else { return Ok(()) };
        // Only failures that reproduce count (and are shrunk): a race that went one way
        // once is reported but not chased.
        match reproduces(&scenario.pair, &ops, opts) {
            Some(again) => Err(TestCaseError::fail(again)),
            None => {
                flaky.fetch_add(1, Ordering::Relaxed);
                eprintln!("fuzz: a failure did not reproduce (not shrunk):\n{first}");
                Ok(())
            }
        }
    });
    let aborted = |message: String| {
        Box::new(FuzzFailure {
            scenario: Scenario {
                purpose: "aborted".into(),
                pair: Default::default(),
                ops: vec![],
            },
            path: PathBuf::new(),
            message,
            replay_command: String::new(),
            runs: runs.load(Ordering::Relaxed),
            elapsed: start.elapsed(),
        })
    };
    if let Some(m) = cannot.lock().unwrap().clone() {
        return Err(aborted(format!("fuzzing aborted, cannot test: {m}")));
    }
    match result {
        Ok(()) => Ok(FuzzReport {
            cases: runs.load(Ordering::Relaxed),
            skipped: skipped.load(Ordering::Relaxed),
            flaky: flaky.load(Ordering::Relaxed),
            elapsed: start.elapsed(),
        }),
        Err(err) => {
            let (message, (init, ops, _)) = match err {
                TestError::Fail(reason, value) => (reason.to_string(), value),
                TestError::Abort(reason) => {
                    return Err(aborted(format!("fuzzing aborted: {reason}")));
                }
            };
            let (pair, ops, message) = minimize(init.pair(), ops, message, opts);
            let first_line = message.lines().next().unwrap_or("").to_string();
            let scenario = Scenario {
                purpose: format!(
                    "shrunk fuzz failure (seed {}): {}",
                    opts.seed,
                    first_line.chars().take(200).collect::<String>()
                ),
                pair,
                ops,
            };
            let dir = opts.failures_dir.clone().unwrap_or_else(failures_dir);
            let _ = std::fs::create_dir_all(&dir);
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let path = dir.join(format!("{}-seed{}-{stamp}.toml", opts.label, opts.seed));
            let text = scenario
                .to_toml_string()
                .unwrap_or_else(|e| format!("# cannot write: {e}\n"));
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("cannot write {}: {e}", path.display());
            }
            let replay_command = replay_command(&path, &opts.exec);
            Err(Box::new(FuzzFailure {
                scenario,
                path,
                message,
                replay_command,
                runs: runs.load(Ordering::Relaxed),
                elapsed: start.elapsed(),
            }))
        }
    }
}

/// `migtest fuzz --report DIR`: writes `DIR/index.html`. After a failure the
/// shrunk case is run once more with its telemetry recorded, and the page
/// shows that run (result table, plot, failure report, QMP transcript
/// tails) with the replay command; after a pass, one row with the count.
pub fn write_report(
    outcome: &Result<FuzzReport, Box<FuzzFailure>>,
    opts: &FuzzOptions,
    dir: &std::path::Path,
) -> anyhow::Result<PathBuf> {
    use crate::report::{Entry, Verdict};
    let summary = |verdict, elapsed: Duration, text: String| Entry {
        name: format!("fuzz seed {}", opts.seed),
        verdict,
        cells: vec!["-".into(), format!("{:.2}", elapsed.as_secs_f64())],
        text: Some(text),
        transcript: None,
        runs: Vec::new(),
    };
    let entry = match outcome {
        Ok(r) => summary(
            Verdict::Pass,
            r.elapsed,
            format!(
                "{} cases passed ({} skipped, {} unreproducible failures)",
                r.cases, r.skipped, r.flaky
            ),
        ),
        Err(f) if f.replay_command.is_empty() => {
            summary(Verdict::Skip, f.elapsed, f.message.clone())
        }
        Err(f) => {
            let name = f
                .path
                .file_stem()
                .map_or("case".into(), |s| s.to_string_lossy().into_owned());
            let run = report::run_recorded(&f.scenario, &name, &opts.exec);
            let mut e = run.entry(&name, f.scenario.ops.len());
            let rerun = match e.verdict {
                Verdict::Fail => e.text.take().unwrap_or_default(),
                _ => format!(
                    "(the recorded rerun of the shrunk case did not fail; the fuzzer's failure:)\n{}",
                    f.message
                ),
            };
            e.verdict = Verdict::Fail;
            e.text = Some(format!(
                "written to {}\nreplay: {}\n\n{rerun}",
                f.path.display(),
                f.replay_command
            ));
            e
        }
    };
    let subtitle = format!("seed {}, {}", opts.seed, opts.exec.src_backend.describe());
    report::write(dir, "migtest fuzz", subtitle, vec![entry])
}
