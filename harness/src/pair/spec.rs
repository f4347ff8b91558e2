//! What a pair is made of: the backends, the guest, the transport and what
//! the launcher sets up. A scenario file's `[pair]` table
//! ([`crate::scenario::PairSpec`]) converts into this.

use crate::backend::{Backend, LaunchSpec};
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

/// Everything needed to launch a pair.
#[derive(Debug, Clone)]
pub struct PairSpec {
    /// Backend of the source.
    pub src_backend: Backend,
    /// Backend of the destination (differs for cross-version runs).
    pub dst_backend: Backend,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest image name (builtin VMM; QEMU always boots the x86 A-B sector).
    pub image: String,
    /// Stream transport.
    pub transport: Transport,
    /// Start the destination with `-S`, so it stays paused after migrating.
    pub dst_paused: bool,
    /// Extra source options.
    pub src_extra: Vec<String>,
    /// Extra destination options.
    pub dst_extra: Vec<String>,
    /// Enable the `events` capability on both sides (the catalog always does;
    /// a scenario file's `events = false` does not).
    pub events: bool,
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

impl PairSpec {
    /// A 128 MiB, 1-vCPU `sweep` pair over a unix socket, destination held with `-S`.
    pub fn new(backend: Backend) -> PairSpec {
        PairSpec {
            src_backend: backend.clone(),
            dst_backend: backend,
            memory: 128 << 20,
            vcpus: 1,
            image: "sweep".into(),
            transport: Transport::Unix,
            dst_paused: true,
            events: true,
            full_speed: true,
            src_extra: Vec::new(),
            dst_extra: Vec::new(),
            observer: None,
            multifd: None,
        }
    }

    /// How to launch the source: running its workload, no `-incoming`.
    pub fn source_launch(&self) -> LaunchSpec {
        LaunchSpec {
            name: "source".into(),
            memory_bytes: self.memory,
            vcpus: self.vcpus,
            image: self.image.clone(),
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
            memory_bytes: self.memory,
            vcpus: self.vcpus,
            image: self.image.clone(),
            incoming: Some("defer".into()),
            paused: self.dst_paused,
            extra_args: self.dst_extra.clone(),
        }
    }
}
