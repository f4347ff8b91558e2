//! Checking a hand-written scenario on the model alone.

use super::Model;

/// Problems of a hand-written scenario found by running it on the model alone (canonical
/// observations): ops that may wait until the executor's timeout, ops the executor would have
/// to refuse. Empty when every op runs in bounded time whatever races happen.
pub fn lint(scenario: &crate::scenario::Scenario) -> Vec<String> {
    let mut m = Model::new(scenario.pair.clone());
    let mut problems = Vec::new();
    for (i, op) in scenario.ops.iter().enumerate() {
        let exp = m.apply(op);
        if exp.may_time_out() {
            problems.push(format!("op {} `{op}` may wait until the timeout", i + 1));
        }
        if let Some(reason) = exp.refused() {
            problems.push(format!("op {} `{op}` cannot run: {reason}", i + 1));
        } else if exp.may_be_refused() {
            problems.push(format!("op {} `{op}` may be refused after a race", i + 1));
        }
        let obs = m.canonical_observation(op);
        m.observe(op, &obs);
    }
    problems
}
