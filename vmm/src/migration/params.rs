//! Migration parameters and capabilities with QEMU's names, defaults, range
//! checks and error texts.

use super::auto_converge;
use migtest_qmp::args::Args;
use migtest_qmp::schema::MigrationCapabilityStatus;
use migtest_qmp::ErrorBody;
use serde_json::{json, Value};

/// `MAX_MIGRATE_DOWNTIME_SECONDS`.
pub const MAX_DOWNTIME_SECONDS: u64 = 2000;
/// Default `downtime-limit` in ms (`DEFAULT_MIGRATE_SET_DOWNTIME`).
pub const DEFAULT_DOWNTIME_LIMIT: u64 = 300;
/// Default `max-bandwidth` (`MAX_THROTTLE`, 128 MiB/s).
pub const DEFAULT_MAX_BANDWIDTH: u64 = 128 << 20;
/// Default `multifd-channels` (`DEFAULT_MIGRATE_MULTIFD_CHANNELS`).
pub const DEFAULT_MULTIFD_CHANNELS: u8 = 2;
/// Default `xbzrle-cache-size` (`DEFAULT_MIGRATE_XBZRLE_CACHE_SIZE`, 64 MiB).
pub const DEFAULT_XBZRLE_CACHE_SIZE: u64 = 64 << 20;

/// The parameters migtest-vmm implements (`MigrationParameters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parameters {
    /// `downtime-limit`, ms.
    pub downtime_limit: u64,
    /// `max-bandwidth`, bytes/s, 0 = unlimited.
    pub max_bandwidth: u64,
    /// `avail-switchover-bandwidth`, bytes/s, 0 = use the measured bandwidth.
    pub avail_switchover_bandwidth: u64,
    /// `switchover-hold`: the source keeps iterating instead of switching over.
    pub switchover_hold: bool,
    /// `multifd-channels`: extra connections per migration with `multifd` (1..=255).
    pub multifd_channels: u8,
    /// `cpu-throttle-initial`: auto-converge's first throttle, % (1..=99).
    pub cpu_throttle_initial: u8,
    /// `cpu-throttle-increment`: auto-converge's step, % (1..=99).
    pub cpu_throttle_increment: u8,
    /// `cpu-throttle-tailslow`: smaller steps close to the target.
    pub cpu_throttle_tailslow: bool,
    /// `max-cpu-throttle`: auto-converge's ceiling, % (initial..=99).
    pub max_cpu_throttle: u8,
    /// `max-postcopy-bandwidth`, bytes/s for the background pages of
    /// postcopy, 0 = unlimited (QEMU's default).
    pub max_postcopy_bandwidth: u64,
    /// `xbzrle-cache-size`: bytes of the source's page cache (a power of two, >= a page).
    pub xbzrle_cache_size: u64,
}

impl Default for Parameters {
    fn default() -> Parameters {
        Parameters {
            downtime_limit: DEFAULT_DOWNTIME_LIMIT,
            max_bandwidth: DEFAULT_MAX_BANDWIDTH,
            avail_switchover_bandwidth: 0,
            switchover_hold: false,
            multifd_channels: DEFAULT_MULTIFD_CHANNELS,
            cpu_throttle_initial: auto_converge::DEFAULT_INITIAL,
            cpu_throttle_increment: auto_converge::DEFAULT_INCREMENT,
            cpu_throttle_tailslow: false,
            max_cpu_throttle: auto_converge::DEFAULT_MAX,
            max_postcopy_bandwidth: 0,
            xbzrle_cache_size: DEFAULT_XBZRLE_CACHE_SIZE,
        }
    }
}

/// A parsed `migrate-set-parameters` request (`MigrateSetParameters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetParameters {
    /// New `downtime-limit`.
    pub downtime_limit: Option<u64>,
    /// New `max-bandwidth`.
    pub max_bandwidth: Option<u64>,
    /// New `avail-switchover-bandwidth`.
    pub avail_switchover_bandwidth: Option<u64>,
    /// New `switchover-hold`.
    pub switchover_hold: Option<bool>,
    /// New `multifd-channels`.
    pub multifd_channels: Option<u8>,
    /// New `cpu-throttle-initial`.
    pub cpu_throttle_initial: Option<u8>,
    /// New `cpu-throttle-increment`.
    pub cpu_throttle_increment: Option<u8>,
    /// New `cpu-throttle-tailslow`.
    pub cpu_throttle_tailslow: Option<bool>,
    /// New `max-cpu-throttle`.
    pub max_cpu_throttle: Option<u8>,
    /// New `max-postcopy-bandwidth`.
    pub max_postcopy_bandwidth: Option<u64>,
    /// New `xbzrle-cache-size`.
    pub xbzrle_cache_size: Option<u64>,
}

fn invalid(param: &str, expects: &str) -> ErrorBody {
    // QERR_INVALID_PARAMETER_VALUE
    ErrorBody::generic(format!("Parameter '{param}' expects {expects}"))
}

/// QEMU's QMP input visitor for `uint64` and `size` members: a negative
/// integer is accepted and wraps ("Need to accept negative values for
/// backward compatibility"), so `-1` becomes 2^64-1 and then meets the
/// parameter's range check; anything else (float, string, null...) is
/// "Parameter 'x' expects uint64", as QEMU 7.2 answers.
fn qapi_uint64(args: &mut Args, name: &str) -> Result<Option<u64>, ErrorBody> {
    match args.opt_value(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(v)) => Ok(Some(v as u64)),
            _ => Err(args.value_error(name, "uint64")),
        },
        Some(_) => Err(args.value_error(name, "uint64")),
    }
}

/// QEMU's input visitor for a `uint8` member (`visit_type_uintN`): the value
/// is read as `uint64` (negatives wrap) and anything above 255 is
/// "Parameter 'x' expects uint8_t" (QEMU 7.2, checked against it).
fn qapi_uint8(args: &mut Args, name: &str) -> Result<Option<u8>, ErrorBody> {
    match qapi_uint64(args, name)? {
        None => Ok(None),
        Some(v) => u8::try_from(v)
            .map(Some)
            .map_err(|_| invalid(name, "uint8_t")),
    }
}

/// `*field = v` when the request gives `v` (QEMU's `if (params->has_x)`).
fn set<T>(field: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *field = v;
    }
}

impl SetParameters {
    /// Reads the arguments strictly (types, unknown members).
    pub fn parse(mut args: Args) -> Result<SetParameters, ErrorBody> {
        let p = SetParameters {
            downtime_limit: qapi_uint64(&mut args, "downtime-limit")?,
            max_bandwidth: qapi_uint64(&mut args, "max-bandwidth")?,
            avail_switchover_bandwidth: qapi_uint64(&mut args, "avail-switchover-bandwidth")?,
            switchover_hold: args.opt_bool("switchover-hold")?,
            multifd_channels: qapi_uint8(&mut args, "multifd-channels")?,
            cpu_throttle_initial: qapi_uint8(&mut args, "cpu-throttle-initial")?,
            cpu_throttle_increment: qapi_uint8(&mut args, "cpu-throttle-increment")?,
            cpu_throttle_tailslow: args.opt_bool("cpu-throttle-tailslow")?,
            max_cpu_throttle: qapi_uint8(&mut args, "max-cpu-throttle")?,
            max_postcopy_bandwidth: qapi_uint64(&mut args, "max-postcopy-bandwidth")?,
            xbzrle_cache_size: qapi_uint64(&mut args, "xbzrle-cache-size")?,
        };
        args.finish()?;
        Ok(p)
    }

    /// QEMU's `migrate_params_test_apply` + `migrate_params_check`: the
    /// parameters as they would be, or the first range error. Nothing is
    /// applied when any value is bad.
    pub fn test_apply(&self, cur: &Parameters) -> Result<Parameters, ErrorBody> {
        let mut p = *cur;
        set(&mut p.max_bandwidth, self.max_bandwidth);
        set(
            &mut p.avail_switchover_bandwidth,
            self.avail_switchover_bandwidth,
        );
        set(&mut p.downtime_limit, self.downtime_limit);
        set(&mut p.switchover_hold, self.switchover_hold);
        set(&mut p.multifd_channels, self.multifd_channels);
        set(&mut p.cpu_throttle_initial, self.cpu_throttle_initial);
        set(&mut p.cpu_throttle_increment, self.cpu_throttle_increment);
        set(&mut p.cpu_throttle_tailslow, self.cpu_throttle_tailslow);
        set(&mut p.max_cpu_throttle, self.max_cpu_throttle);
        // QEMU 7.2 checks the whole result, in this order.
        auto_converge::check_rates(&p)?;
        // No range check in QEMU 7.2 (a `size`, any uint64).
        set(&mut p.max_postcopy_bandwidth, self.max_postcopy_bandwidth);
        set(&mut p.xbzrle_cache_size, self.xbzrle_cache_size);
        // QEMU checks `> SIZE_MAX`; on a 64-bit host no uint64 fails it, so
        // these two checks only exist to mirror QEMU on 32-bit hosts.
        let bandwidths = [
            ("max_bandwidth", self.max_bandwidth, p.max_bandwidth),
            (
                "avail_switchover_bandwidth",
                self.avail_switchover_bandwidth,
                p.avail_switchover_bandwidth,
            ),
        ];
        for (name, given, value) in bandwidths {
            if given.is_some() && value > usize::MAX as u64 {
                return Err(invalid(
                    name,
                    &format!(
                        "an integer in the range of 0 to {} bytes/second",
                        usize::MAX
                    ),
                ));
            }
        }
        if self.downtime_limit.is_some() && p.downtime_limit > MAX_DOWNTIME_SECONDS * 1000 {
            // QEMU 7.2 prints stringify(MAX_MIGRATE_DOWNTIME), the macro's
            // unexpanded text (recorded in fixtures/qemu-7.2/).
            return Err(invalid(
                "downtime_limit",
                "an integer in the range of 0 to (2000 * 1000) ms",
            ));
        }
        if self.multifd_channels.is_some() && p.multifd_channels < 1 {
            // QEMU 7.2's migrate_params_check, after downtime-limit's
            // (checked against it: both bad, downtime-limit's error wins).
            return Err(invalid("multifd_channels", "a value between 1 and 255"));
        }
        if self.xbzrle_cache_size.is_some() {
            // After multifd-channels', as in QEMU 7.2's migrate_params_check.
            crate::migration::xbzrle::check_cache_size(p.xbzrle_cache_size)
                .map_err(|e| invalid("xbzrle_cache_size", e))?;
        }
        auto_converge::check_max(&p)?;
        Ok(p)
    }
}

impl Parameters {
    /// The `query-migrate-parameters` reply.
    pub fn to_value(&self) -> Value {
        json!({
            "downtime-limit": self.downtime_limit,
            "max-bandwidth": self.max_bandwidth,
            "avail-switchover-bandwidth": self.avail_switchover_bandwidth,
            "switchover-hold": self.switchover_hold,
            "multifd-channels": self.multifd_channels,
            "cpu-throttle-initial": self.cpu_throttle_initial,
            "cpu-throttle-increment": self.cpu_throttle_increment,
            "cpu-throttle-tailslow": self.cpu_throttle_tailslow,
            "max-cpu-throttle": self.max_cpu_throttle,
            "max-postcopy-bandwidth": self.max_postcopy_bandwidth,
            "xbzrle-cache-size": self.xbzrle_cache_size,
        })
    }
}

/// QEMU 7.2's `MigrationCapability` list, in enum order.
pub const CAPABILITY_NAMES: [&str; 21] = [
    "xbzrle",
    "rdma-pin-all",
    "auto-converge",
    "zero-blocks",
    "compress",
    "events",
    "postcopy-ram",
    "x-colo",
    "release-ram",
    "block",
    "return-path",
    "pause-before-switchover",
    "multifd",
    "dirty-bitmaps",
    "postcopy-blocktime",
    "late-block-activate",
    "x-ignore-shared",
    "validate-uuid",
    "background-snapshot",
    "zero-copy-send",
    "postcopy-preempt",
];

/// Capabilities migtest-vmm implements; the others can only be set false.
pub const SUPPORTED_CAPABILITIES: [&str; 7] = [
    "auto-converge",
    "xbzrle",
    "events",
    "pause-before-switchover",
    "multifd",
    "postcopy-ram",
    "postcopy-blocktime",
];

/// Capability states, indexed like [`CAPABILITY_NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    states: [bool; 21],
}

impl Capabilities {
    fn index(name: &str) -> Option<usize> {
        CAPABILITY_NAMES.iter().position(|n| *n == name)
    }

    /// The state of a capability by name (false for unknown names).
    pub fn get(&self, name: &str) -> bool {
        Self::index(name).map(|i| self.states[i]).unwrap_or(false)
    }

    /// `events`.
    pub fn events(&self) -> bool {
        self.get("events")
    }

    /// `pause-before-switchover`.
    pub fn pause_before_switchover(&self) -> bool {
        self.get("pause-before-switchover")
    }

    /// `auto-converge`: throttle the source's vCPUs when the guest dirties
    /// memory faster than it is sent.
    pub fn auto_converge(&self) -> bool {
        self.get("auto-converge")
    }

    /// `xbzrle`: re-sent pages XBZRLE-encoded against the source's page cache.
    pub fn xbzrle(&self) -> bool {
        self.get("xbzrle")
    }

    /// `multifd`: pages over `multifd-channels` extra connections.
    pub fn multifd(&self) -> bool {
        self.get("multifd")
    }

    /// Parses a `migrate-set-capabilities` request and returns the states
    /// it would produce; nothing changes unless every entry is valid.
    pub fn test_apply(&self, mut args: Args) -> Result<Capabilities, ErrorBody> {
        let list = args.array("capabilities")?;
        args.finish()?;
        let mut next = *self;
        for (i, item) in list.into_iter().enumerate() {
            let path = format!("capabilities[{i}]");
            let map = match item {
                Value::Object(m) => m,
                _ => {
                    return Err(ErrorBody::generic(format!(
                        "Invalid parameter type for '{path}', expected: object"
                    )))
                }
            };
            let mut a = Args::nested(&path, map);
            let name = a.str("capability")?;
            if !CAPABILITY_NAMES.contains(&name.as_str()) {
                // QEMU's visit_type_enum names the bare member, not its path.
                return Err(ErrorBody::generic(format!(
                    "Parameter 'capability' does not accept value '{name}'"
                )));
            }
            let state = a.bool("state")?;
            a.finish()?;
            if state && !SUPPORTED_CAPABILITIES.contains(&name.as_str()) {
                return Err(ErrorBody::generic(format!(
                    "Migration capability '{name}' is not supported by migtest-vmm"
                )));
            }
            if let Some(idx) = Self::index(&name) {
                next.states[idx] = state;
            }
        }
        // As QEMU 8.x's migrate_caps_check: migtest-vmm's postcopy sends
        // its pages on the main channel only.
        if next.get("postcopy-ram") && next.multifd() {
            return Err(ErrorBody::generic(
                "Postcopy is not yet compatible with multifd",
            ));
        }
        Ok(next)
    }

    /// The `query-migrate-capabilities` reply.
    pub fn to_value(&self) -> Value {
        let list: Vec<MigrationCapabilityStatus> = CAPABILITY_NAMES
            .iter()
            .zip(self.states.iter())
            .map(|(n, s)| MigrationCapabilityStatus {
                capability: n.to_string(),
                state: *s,
            })
            .collect();
        serde_json::to_value(list).unwrap_or(Value::Array(vec![]))
    }
}
