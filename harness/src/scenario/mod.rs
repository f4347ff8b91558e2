//! Scenarios: a purpose, the VM pair to launch and a list of [`Op`]s, readable from TOML and JSON.
//!
//! ```toml
//! purpose = "hold switchover for 3 passes, release, converge"
//! [pair]
//! memory = "128M"
//! [[ops]]
//! op = "migrate"
//! [[ops]]
//! op = "hold"
//! ```

pub mod arb;
pub mod capability;
pub mod exec;
pub mod file_check;
pub mod op;

use serde::{Deserialize, Serialize};

pub use crate::pair::PairSpec;
pub use crate::size::{Size, SizeError};
pub use capability::Capability;
pub use op::{MigrationStatus, Op, Side, Transport};

/// A scenario file.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// One line: what the scenario shows.
    pub purpose: String,
    /// The pair to launch.
    #[serde(default)]
    pub pair: PairSpec,
    /// The steps, in order.
    #[serde(default)]
    pub ops: Vec<Op>,
}

/// A scenario file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// TOML syntax or schema error.
    #[error("scenario TOML: {0}")]
    TomlRead(#[from] toml::de::Error),
    /// TOML serialization error.
    #[error("scenario TOML: {0}")]
    TomlWrite(#[from] toml::ser::Error),
    /// JSON syntax, schema or serialization error.
    #[error("scenario JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Scenario {
    /// Parses a scenario file in TOML.
    pub fn from_toml_str(s: &str) -> Result<Scenario, ScenarioError> {
        Ok(toml::from_str(s)?)
    }

    /// Writes the scenario as TOML (`[pair]` table, `[[ops]]` array of tables).
    pub fn to_toml_string(&self) -> Result<String, ScenarioError> {
        Ok(toml::to_string(self)?)
    }

    /// Parses a scenario in JSON.
    pub fn from_json_str(s: &str) -> Result<Scenario, ScenarioError> {
        Ok(serde_json::from_str(s)?)
    }

    /// Writes the scenario as pretty JSON.
    pub fn to_json_string(&self) -> Result<String, ScenarioError> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = r#"
purpose = "hold switchover for 3 passes, release, converge"
[pair]
memory = "128M"
transport = "tcp"
dst-paused = true
[[ops]]
op = "set-parameters"
side = "source"
downtime-limit = 30000
max-bandwidth = "1G"
[[ops]]
op = "migrate"
[[ops]]
op = "hold"
[[ops]]
op = "wait-passes"
n = 3
[[ops]]
op = "release"
[[ops]]
op = "wait-completed"
[[ops]]
op = "check-memory"
[[ops]]
op = "continue"
state = "pre-switchover"
[[ops]]
op = "wait-status"
side = "destination"
status = "completed"
"#;

    #[test]
    fn parses_the_example_file() {
        let s = Scenario::from_toml_str(EXAMPLE).unwrap();
        assert_eq!(s.pair.memory, Size::mib(128));
        assert_eq!(s.pair.transport, Transport::Tcp);
        assert_eq!(s.pair.vcpus, 1, "defaults fill the rest");
        assert_eq!(s.pair.image, "sweep");
        assert_eq!(
            s.ops[0],
            Op::SetParameters {
                side: Side::Source,
                downtime_limit: Some(30000),
                max_bandwidth: Some(Size(1 << 30)),
                avail_switchover_bandwidth: None,
                switchover_hold: None,
                multifd_channels: None,
                xbzrle_cache_size: None,
                max_postcopy_bandwidth: None,
            }
        );
        assert_eq!(s.ops[1], Op::Migrate { transport: None });
        assert_eq!(s.ops[2], Op::Hold {});
        assert_eq!(s.ops[3], Op::WaitPasses { n: 3 });
        assert_eq!(
            s.ops[7],
            Op::Continue {
                state: MigrationStatus::PreSwitchover
            }
        );
        assert_eq!(
            s.ops[8],
            Op::WaitStatus {
                side: Side::Destination,
                status: MigrationStatus::Completed
            }
        );
        let again = Scenario::from_toml_str(&s.to_toml_string().unwrap()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn rejects_unknown_fields_and_ops() {
        for bad in [
            "purpose = 'x'\n[[ops]]\nop = 'hold'\nside = 'source'\n",
            "purpose = 'x'\n[[ops]]\nop = 'migrate'\nspeed = 3\n",
            "purpose = 'x'\n[[ops]]\nop = 'teleport'\n",
            "purpose = 'x'\n[[ops]]\nop = 'wait-passes'\n",
            "purpose = 'x'\n[[ops]]\nop = 'stop'\nside = 'both'\n",
            "purpose = 'x'\n[[ops]]\nop = 'set-parameters'\nside = 'source'\ndowntime_limit = 3\n",
            "purpose = 'x'\n[[ops]]\nop = 'set-parameters'\nside = 'source'\ndowntime-limit = -3\n",
            "purpose = 'x'\n[pair]\nmemroy = '1G'\n",
            "purpose = 'x'\nextra = 1\n",
            "[[ops]]\nop = 'hold'\n",
        ] {
            assert!(Scenario::from_toml_str(bad).is_err(), "accepted:\n{bad}");
        }
    }

    #[test]
    fn json_uses_the_same_shape() {
        let s = Scenario::from_json_str(
            r#"{"purpose":"p","pair":{"memory":"64M","events":false},
                "ops":[{"op":"migrate","transport":"unix"},{"op":"kill","side":"destination"},
                       {"op":"set-capabilities","side":"source","pause-before-switchover":true}]}"#,
        )
        .unwrap();
        assert!(!s.pair.events);
        assert_eq!(s.pair.memory, Size::mib(64));
        assert_eq!(
            s.ops[1],
            Op::Kill {
                side: Side::Destination
            }
        );
        assert_eq!(
            s.ops[2],
            Op::set_capability(Side::Source, Capability::PauseBeforeSwitchover, true)
        );
        assert!(
            Scenario::from_json_str(r#"{"purpose":"p","ops":[{"op":"cancel","x":1}]}"#).is_err()
        );
    }

    #[test]
    fn op_display_is_one_line() {
        assert_eq!(Op::Hold {}.to_string(), "hold");
        assert_eq!(
            Op::WaitPasses { n: 3 }.to_string(),
            r#"wait-passes {"n":3}"#
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn toml_round_trip(s in arb::scenario()) {
            let text = s.to_toml_string().unwrap();
            prop_assert_eq!(Scenario::from_toml_str(&text).unwrap(), s, "{}", text);
        }

        #[test]
        fn json_round_trip(s in arb::scenario()) {
            let text = s.to_json_string().unwrap();
            prop_assert_eq!(Scenario::from_json_str(&text).unwrap(), s);
        }

        #[test]
        fn size_round_trip(n in any::<u64>()) {
            let s = Size(n);
            prop_assert_eq!(s.to_string().parse::<Size>().unwrap(), s);
        }
    }
}
