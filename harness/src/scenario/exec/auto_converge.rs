//! Performing the auto-converge ops: the capability, the throttle parameters (QEMU's names,
//! absent fields not sent) and the wait for the source to report a throttle.

use serde_json::{json, Map, Value};

use crate::model::{wait_gives_up, Reply};

use super::super::{MigrationStatus, Op, Side};
use super::Executor;

impl Executor {
    pub(super) fn perform_auto_converge(&mut self, op: &Op) -> anyhow::Result<Reply> {
        match op {
            Op::SetAutoConverge { side, state } => self.qmp(
                *side,
                "migrate-set-capabilities",
                json!({"capabilities": [{"capability": "auto-converge", "state": state}]}),
            ),
            Op::SetThrottle {
                side,
                cpu_throttle_initial: i,
                cpu_throttle_increment: inc,
                cpu_throttle_tailslow: t,
                max_cpu_throttle: m,
            } => {
                let mut args = Map::new();
                let fields = [
                    ("cpu-throttle-initial", i.map(|v| json!(v))),
                    ("cpu-throttle-increment", inc.map(|v| json!(v))),
                    ("cpu-throttle-tailslow", t.map(|v| json!(v))),
                    ("max-cpu-throttle", m.map(|v| json!(v))),
                ];
                for (name, value) in fields {
                    if let Some(v) = value {
                        args.insert(name.into(), v);
                    }
                }
                self.qmp(*side, "migrate-set-parameters", Value::Object(args))
            }
            Op::WaitThrottled {} => self.wait_info(op, Side::Source, |info| {
                let status = info.status.unwrap_or(MigrationStatus::None);
                if info.cpu_throttle_percentage.is_some() {
                    Some(Reply::Ok)
                } else if wait_gives_up(op, status) {
                    Some(Reply::Unreachable { status })
                } else {
                    None
                }
            }),
            _ => anyhow::bail!("not an auto-converge op: {op}"),
        }
    }
}
