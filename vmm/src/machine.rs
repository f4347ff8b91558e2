//! Assembling a running VMM from its options: guest, VM, migration state,
//! QMP monitors, and the incoming migration if `-incoming` asked for one.

use crate::cli::{Options, SerialTarget};
use crate::commands::Dispatcher;
use crate::guest::{Guest, GuestConfig, GuestImage, SerialConfig};
use crate::migration::host::MigrationHost;
use crate::migration::Migration;
use crate::server;
use crate::vm::Vm;
use migtest_qmp::schema::RunState;
use std::convert::Infallible;
use std::sync::Arc;

/// The guest without `-kernel`: nothing runs, like QEMU with no boot device.
const NO_KERNEL_IMAGE: &str =
    "name = 'none'\ndescription = 'no -kernel given: vCPUs idle'\n[workload]\nkind = 'idle'\n";

/// Builds the VM and serves it until a `quit` or a migration outcome ends
/// the process. Returns only on a start-up error, as one line of text.
pub fn run(opts: Options) -> Result<Infallible, String> {
    let image = match &opts.kernel {
        Some(path) => {
            GuestImage::load(path).map_err(|e| format!("-kernel {}: {e}", path.display()))?
        }
        None => {
            GuestImage::parse_named(NO_KERNEL_IMAGE, "<no -kernel>").map_err(|e| e.to_string())?
        }
    };
    let serial = match &opts.serial {
        SerialTarget::File(p) => SerialConfig::File(p.clone()),
        SerialTarget::Stdio => SerialConfig::Stdio,
        SerialTarget::None => SerialConfig::None,
    };
    let guest = Guest::new(GuestConfig {
        ram_size: opts.ram_size,
        vcpus: opts.vcpus,
        backing: opts.ram_backing.clone(),
        image,
        serial,
    })
    .map_err(|e| e.to_string())?;
    if opts.mem_prealloc {
        // As QEMU's `prealloc-threads`: one thread per vCPU.
        guest
            .ram()
            .prealloc(opts.vcpus)
            .map_err(|e| e.to_string())?;
    }
    let initial = match (&opts.incoming, opts.start_paused) {
        (Some(_), _) => RunState::Inmigrate,
        (None, true) => RunState::Prelaunch,
        (None, false) => RunState::Paused,
    };
    let vm = Arc::new(Vm::new(
        guest,
        opts.name.clone(),
        initial,
        !opts.start_paused,
    ));
    let host: Arc<dyn MigrationHost> = vm.clone();
    let migration = Arc::new(Migration::new(Arc::downgrade(&host)));
    let dispatcher = Arc::new(Dispatcher::new(vm.clone(), migration.clone()));
    // Incoming state first: a monitor may send migrate-incoming as soon as
    // its socket accepts.
    match &opts.incoming {
        Some(uri) => migration
            .start_incoming_from_cmdline(uri)
            .map_err(|e| format!("-incoming {uri}: {e}"))?,
        None if !opts.start_paused => vm.vm_start(),
        None => {}
    }
    for q in &opts.qmp {
        server::listen(&q.path, dispatcher.clone())
            .map_err(|e| format!("-qmp unix:{}: {e}", q.path.display()))?;
    }
    loop {
        std::thread::park();
    }
}
