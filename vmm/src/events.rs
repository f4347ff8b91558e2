//! Delivery of QMP events to every connected monitor that left
//! capabilities-negotiation mode.

use migtest_qmp::{Event, ServerMessage};
use serde_json::Value;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, Weak};

/// The writing half of one monitor connection. Replies and events are
/// written whole under its lock, so lines never interleave.
pub type MonitorWriter = Arc<Mutex<UnixStream>>;

/// Broadcasts events to subscribed monitors.
#[derive(Debug, Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<Weak<Mutex<UnixStream>>>>,
}

impl EventBus {
    /// Starts delivering events to a monitor (after `qmp_capabilities`).
    pub fn subscribe(&self, writer: &MonitorWriter) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|w| w.strong_count() > 0);
        subs.push(Arc::downgrade(writer));
    }

    /// Emits an event, stamped now, to every live subscriber.
    pub fn emit(&self, name: &str, data: Option<Value>) {
        let line = ServerMessage::Event(Event::now(name, data)).to_line();
        let subs: Vec<_> = {
            let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            subs.retain(|w| w.strong_count() > 0);
            subs.iter().filter_map(Weak::upgrade).collect()
        };
        for writer in subs {
            let mut stream = writer.lock().unwrap_or_else(|e| e.into_inner());
            // A client that went away is dropped by its connection thread.
            let _ = stream.write_all(line.as_bytes());
        }
    }
}
