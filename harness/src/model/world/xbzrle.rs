//! QEMU 7.2's rules for XBZRLE as the model sees them: the `xbzrle`
//! capability is set like any other (refused on a source with a migration
//! running, see `apply`), and `xbzrle-cache-size` must be a power of two no
//! less than the target page size (checked after `downtime-limit`, as
//! `migrate_params_check` does), any time. The capability changes what goes
//! on the wire, not what the model judges: the memory still ends equal.

use crate::scenario::{Capability, Op, Side, Size};

/// QEMU 7.2's refusal of a bad `xbzrle-cache-size` (verified against it).
pub const ERR_XBZRLE_CACHE_SIZE: &str =
    "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size";

/// QEMU's default `xbzrle-cache-size` (`DEFAULT_MIGRATE_XBZRLE_CACHE_SIZE`, 64 MiB).
pub fn default_cache_size() -> Size {
    Size(64 << 20)
}

/// The error a `set-parameters` op with this `xbzrle-cache-size` gets, if any.
pub fn cache_size_error(size: Option<Size>) -> Option<&'static str> {
    let s = size?.0;
    (s < 4096 || !s.is_power_of_two()).then_some(ERR_XBZRLE_CACHE_SIZE)
}

/// The fuzzer's XBZRLE ops with their weights (`idle`: no migration on the
/// source): the capability on (mostly before a migration, so it is used) and
/// off, a valid small cache, a cache below a page and one not a power of two.
pub fn candidates(idle: bool) -> Vec<(u32, Op)> {
    let cap = |on| Op::set_capability(Side::Source, Capability::Xbzrle, on);
    let size = |bytes| Op::SetParameters {
        side: Side::Source,
        downtime_limit: None,
        max_bandwidth: None,
        avail_switchover_bandwidth: None,
        switchover_hold: None,
        multifd_channels: None,
        xbzrle_cache_size: Some(Size(bytes)),
        max_postcopy_bandwidth: None,
    };
    vec![
        (if idle { 4 } else { 1 }, cap(true)),
        (1, cap(false)),
        (1, size(1 << 20)),
        (1, size(2048)),
        (1, size(3 << 20)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use crate::scenario::PairSpec;
    use proptest::prelude::*;

    fn set_size(side: Side, size: u64) -> Op {
        let mut op = Op::no_parameters(side);
        if let Op::SetParameters {
            xbzrle_cache_size, ..
        } = &mut op
        {
            *xbzrle_cache_size = Some(Size(size));
        }
        op
    }

    fn set_cap(side: Side, on: bool) -> Op {
        Op::set_capability(side, Capability::Xbzrle, on)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// Any size on either side: accepted and kept exactly when a power of two >= 4096;
        /// otherwise QEMU's text and nothing changes.
        #[test]
        fn cache_size_rule(size in prop_oneof![any::<u64>(), (12u32..63).prop_map(|b| 1u64 << b),
                                               0u64..8192],
                           dst in any::<bool>()) {
            let side = if dst { Side::Destination } else { Side::Source };
            let mut m = Model::new(PairSpec::default());
            let exp = m.apply(&set_size(side, size));
            let valid = size >= 4096 && size.is_power_of_two();
            let replies = format!("{:?}", exp.replies());
            prop_assert_eq!(replies.contains(ERR_XBZRLE_CACHE_SIZE), !valid, "{}", replies);
            let kept = m.parameters(side).unwrap().xbzrle_cache_size;
            prop_assert_eq!(kept, if valid { Size(size) } else { default_cache_size() });
        }
    }

    #[test]
    fn capability_refused_on_a_migrating_source_only() {
        let mut m = Model::new(PairSpec::default());
        assert_eq!(m.capabilities(Side::Source).map(|c| c.xbzrle), Some(false));
        assert!(
            !format!("{:?}", m.apply(&set_cap(Side::Source, true)).replies()).contains("Error")
        );
        assert_eq!(m.capabilities(Side::Source).map(|c| c.xbzrle), Some(true));
        m.apply(&Op::Hold {});
        m.apply(&Op::Migrate { transport: None });
        let exp = m.apply(&set_cap(Side::Source, false));
        assert!(
            format!("{:?}", exp.replies()).contains("There's a migration process in progress"),
            "{:?}",
            exp.replies()
        );
        assert_eq!(m.capabilities(Side::Source).map(|c| c.xbzrle), Some(true));
        // The cache size may change during a migration, as in QEMU.
        let exp = m.apply(&set_size(Side::Source, 1 << 20));
        assert!(!format!("{:?}", exp.replies()).contains("Error"));
        assert_eq!(
            m.parameters(Side::Source).map(|p| p.xbzrle_cache_size),
            Some(Size(1 << 20))
        );
    }
}
