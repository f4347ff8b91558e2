//! What a pair is ([`PairSpec`]: the guest, the transport, how the
//! destination starts; a scenario file's `[pair]` table) and how it is
//! launched ([`PairLaunch`]: that pair on backends, with what the launcher
//! sets up).

use crate::backend::{Backend, LaunchSpec};
use crate::size::Size;
use crate::vm::ReplyObserver;
use std::sync::Arc;

/// How the migration stream travels (the pair's and the op language's).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// A unix socket in the destination's log directory.
    #[default]
    Unix,
    /// TCP on loopback, port picked by the destination.
    Tcp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Unix => "unix",
            Transport::Tcp => "tcp",
        })
    }
}

/// What a pair is, wherever it runs: the guest (RAM, vCPUs, image), the
/// transport and how the destination starts. A scenario file's `[pair]`
/// table and the model's starting point; [`PairLaunch`] places it on backends.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct PairSpec {
    /// Guest RAM (`-m`), default 256M.
    pub memory: Size,
    /// vCPUs (`-smp`), default 1.
    pub vcpus: u32,
    /// Guest image / builtin workload (`sweep`, `hotset`, `rate`, `random`,
    /// `idle`), default `sweep` (QEMU always boots the x86 A-B sector).
    pub image: String,
    /// Migration transport, default `unix`.
    pub transport: Transport,
    /// Launch the destination with `-S` so it stays paused after the
    /// migration (default true).
    pub dst_paused: bool,
    /// The launcher enables the `events` capability on both sides (default
    /// true; the catalog always does).
    pub events: bool,
}

impl Default for PairSpec {
    fn default() -> PairSpec {
        PairSpec {
            memory: Size::mib(256),
            vcpus: 1,
            image: "sweep".to_string(),
            transport: Transport::Unix,
            dst_paused: true,
            events: true,
        }
    }
}

/// A [`PairSpec`] placed on backends, with what the launcher sets up
/// beyond the pair itself: what [`crate::pair::Pair::launch`] takes.
#[derive(Debug, Clone)]
pub struct PairLaunch {
    /// The pair.
    pub pair: PairSpec,
    /// Backend of the source.
    pub src_backend: Backend,
    /// Backend of the destination (differs for cross-version runs).
    pub dst_backend: Backend,
    /// Extra source options.
    pub src_extra: Vec<String>,
    /// Extra destination options.
    pub dst_extra: Vec<String>,
    /// Set `max-bandwidth` 0 on the source at launch: full-speed precopy, as
    /// QEMU's qtests do (the catalog). A scenario file's pair leaves every
    /// parameter at QEMU's default, the model's starting point.
    pub full_speed: bool,
    /// Sees every QMP reply of the pair's VMs (`migtest compare`).
    pub observer: Option<Arc<dyn ReplyObserver>>,
    /// `Some(n)`: the `multifd` capability on both sides with
    /// `multifd-channels` n, set before `migrate` / `migrate-incoming`.
    pub multifd: Option<u8>,
}

impl PairLaunch {
    /// The catalog's pair: 128 MiB, 1-vCPU `sweep` over a unix socket,
    /// destination held with `-S`, full-speed precopy, both sides on `backend`.
    pub fn new(backend: Backend) -> PairLaunch {
        let pair = PairSpec {
            memory: Size::mib(128),
            ..PairSpec::default()
        };
        let mut launch = PairLaunch::on(pair, backend.clone(), backend);
        launch.full_speed = true;
        launch
    }

    /// `pair` with the source on `src_backend` and destinations on
    /// `dst_backend`, no extra options, no observer, no multifd, parameters
    /// left at QEMU's defaults (no full-speed `max-bandwidth`): how a
    /// scenario file's pair is launched.
    pub fn on(pair: PairSpec, src_backend: Backend, dst_backend: Backend) -> PairLaunch {
        PairLaunch {
            pair,
            src_backend,
            dst_backend,
            src_extra: Vec::new(),
            dst_extra: Vec::new(),
            full_speed: false,
            observer: None,
            multifd: None,
        }
    }

    /// Guest RAM in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.pair.memory.bytes()
    }

    /// How to launch the source: running its workload, no `-incoming`.
    pub fn source_launch(&self) -> LaunchSpec {
        LaunchSpec {
            name: "source".into(),
            memory_bytes: self.memory_bytes(),
            vcpus: self.pair.vcpus,
            image: self.pair.image.clone(),
            incoming: None,
            paused: false,
            extra_args: self.src_extra.clone(),
        }
    }

    /// How to launch the `generation`th destination (`-name destination-N`):
    /// `-incoming defer`, held with `-S` when [`PairSpec::dst_paused`].
    pub fn destination_launch(&self, generation: u32) -> LaunchSpec {
        LaunchSpec {
            name: format!("destination-{generation}"),
            memory_bytes: self.memory_bytes(),
            vcpus: self.pair.vcpus,
            image: self.pair.image.clone(),
            incoming: Some("defer".into()),
            paused: self.pair.dst_paused,
            extra_args: self.dst_extra.clone(),
        }
    }
}
