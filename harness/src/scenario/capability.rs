//! [`Capability`]: one migration capability a `set-capabilities` op can set, and
//! [`Op::set_capability`], the op that sets only it (what generators and tests write).

use super::{Op, Side};

/// A migration capability of the op language (QEMU's name in [`Capability::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Capability {
    /// `events`.
    Events,
    /// `pause-before-switchover`.
    PauseBeforeSwitchover,
    /// `multifd`.
    Multifd,
    /// `xbzrle`.
    Xbzrle,
    /// `postcopy-ram`.
    PostcopyRam,
}

impl Capability {
    /// QEMU's name of the capability.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Events => "events",
            Capability::PauseBeforeSwitchover => "pause-before-switchover",
            Capability::Multifd => "multifd",
            Capability::Xbzrle => "xbzrle",
            Capability::PostcopyRam => "postcopy-ram",
        }
    }
}

impl Op {
    /// A `set-capabilities` op on `side` that sets only `capability` to `state`.
    pub fn set_capability(side: Side, capability: Capability, state: bool) -> Op {
        let only = |c: Capability| (c == capability).then_some(state);
        Op::SetCapabilities {
            side,
            events: only(Capability::Events),
            pause_before_switchover: only(Capability::PauseBeforeSwitchover),
            multifd: only(Capability::Multifd),
            xbzrle: only(Capability::Xbzrle),
            postcopy_ram: only(Capability::PostcopyRam),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_only_the_named_capability() {
        let all = [
            Capability::Events,
            Capability::PauseBeforeSwitchover,
            Capability::Multifd,
            Capability::Xbzrle,
            Capability::PostcopyRam,
        ];
        for c in all {
            for state in [false, true] {
                let op = Op::set_capability(Side::Destination, c, state);
                assert_eq!(
                    op.capability_list(),
                    vec![serde_json::json!({"capability": c.name(), "state": state})]
                );
                assert!(matches!(
                    op,
                    Op::SetCapabilities {
                        side: Side::Destination,
                        ..
                    }
                ));
            }
        }
    }
}
