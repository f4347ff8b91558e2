//! The `scenario_file` fuzz check: arbitrary text read as a scenario file
//! (`migtest run FILE.toml`, TOML or JSON), then judged op by op by the
//! model as the executor does before it launches anything.
//!
//! What must hold: no panic; a refused file gets an error with a text; an
//! accepted scenario writes back as TOML and as JSON that read back as the
//! same scenario; the model gives every op an expectation. The fuzz target
//! (`fuzz/fuzz_targets/scenario_file.rs`) and the regression test
//! (`harness/tests/fuzz_regressions.rs`) call [`check_scenario_file`].

use super::Scenario;
use crate::model::Model;

/// Ops judged by the model per input, so a long file stays a quick input.
pub const MODEL_OPS: usize = 64;

/// Runs the `scenario_file` check on one input (see the module docs).
pub fn check_scenario_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for parsed in [Scenario::from_toml_str(text), Scenario::from_json_str(text)] {
        match parsed {
            Ok(scenario) => check_scenario(&scenario),
            Err(e) => assert!(!e.to_string().is_empty(), "a refusal without text"),
        }
    }
}

fn check_scenario(s: &Scenario) {
    // TOML cannot write every value a JSON file may carry (e.g. a string
    // with a NUL in a key position is fine, but integers beyond i64 are
    // not); a write error is an error, not a panic.
    if let Ok(toml) = s.to_toml_string() {
        let back = Scenario::from_toml_str(&toml)
            .unwrap_or_else(|e| panic!("written TOML does not read back: {e}\n{toml}"));
        assert_eq!(&back, s, "TOML round trip changed the scenario:\n{toml}");
    }
    let json = s.to_json_string().expect("a scenario writes as JSON");
    let back = Scenario::from_json_str(&json)
        .unwrap_or_else(|e| panic!("written JSON does not read back: {e}\n{json}"));
    assert_eq!(&back, s, "JSON round trip changed the scenario:\n{json}");
    let mut model = Model::new(s.pair.clone());
    for op in s.ops.iter().take(MODEL_OPS) {
        let _ = model.apply(op);
        assert!(
            model.possibilities() > 0,
            "the model lost every world at {op:?}"
        );
    }
}
