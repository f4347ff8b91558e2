//! The QMP server: one listener thread per `-qmp` socket, one thread per
//! connection. Commands from all monitors run one at a time (QEMU runs
//! them under its big lock), through [`crate::commands::Dispatcher`].

use crate::commands::{Dispatcher, Outcome};
use crate::events::MonitorWriter;
use migtest_qmp::framing::{Frame, JsonSplitter};
use migtest_qmp::message::{Command, Rejected};
use migtest_qmp::{ErrorBody, ErrorClass, Greeting, ServerMessage};
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Binds a QMP socket (replacing a stale socket file) and serves it on a
/// background thread.
pub fn listen(path: &Path, dispatcher: Arc<Dispatcher>) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("qmp-listener".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let dispatcher = dispatcher.clone();
                let _ = std::thread::Builder::new()
                    .name("qmp-conn".into())
                    .spawn(move || serve_connection(stream, dispatcher));
            }
        })?;
    Ok(())
}

fn send(writer: &MonitorWriter, msg: &ServerMessage) -> bool {
    let line = msg.to_line();
    let mut stream = writer.lock().unwrap_or_else(|e| e.into_inner());
    stream.write_all(line.as_bytes()).is_ok()
}

/// Per-connection protocol state.
struct Session {
    writer: MonitorWriter,
    negotiated: bool,
}

fn serve_connection(stream: UnixStream, dispatcher: Arc<Dispatcher>) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut session = Session {
        writer: Arc::new(Mutex::new(write_half)),
        negotiated: false,
    };
    // QEMU greets from its main loop, i.e. after start-up has finished.
    dispatcher.vm().wait_started(Duration::from_secs(10));
    let greeting = Greeting {
        version: dispatcher.version(),
        capabilities: Vec::new(),
    };
    if !send(&session.writer, &ServerMessage::Greeting(greeting)) {
        return;
    }
    crate::monitor_fds::enter_monitor();
    let reader = stream;
    let mut splitter = JsonSplitter::default();
    let mut buf = [0u8; 8192];
    loop {
        // Descriptors passed with SCM_RIGHTS wait for a `getfd` on this
        // thread, the one that runs this monitor's commands.
        let n = match crate::monitor_fds::recv_with_fds(&reader, &mut buf) {
            Ok((0, _)) | Err(_) => return,
            Ok((n, fds)) => {
                crate::monitor_fds::set_received(fds);
                n
            }
        };
        for frame in splitter.feed(&buf[..n]) {
            let (reply, quit) = handle_frame(&mut session, &dispatcher, frame);
            if let Some(reply) = reply {
                if !send(&session.writer, &reply) && !quit {
                    return;
                }
            }
            if quit {
                dispatcher.shutdown();
            }
        }
    }
}

/// The reply to one input frame (if any), and whether it was a `quit`.
fn handle_frame(
    session: &mut Session,
    dispatcher: &Dispatcher,
    frame: Frame,
) -> (Option<ServerMessage>, bool) {
    let cmd = match parse_frame(frame) {
        Ok(c) => c,
        Err(Rejected { error, id }) => return (Some(ServerMessage::Error { error, id }), false),
    };
    let id = cmd.id.clone();
    match negotiate_or_dispatch(session, dispatcher, cmd) {
        Ok(Outcome::Reply(value)) => (Some(ServerMessage::Return { value, id }), false),
        Ok(Outcome::Quit(value)) => (Some(ServerMessage::Return { value, id }), true),
        Err(error) => (Some(ServerMessage::Error { error, id }), false),
    }
}

/// What the server makes of one input frame before any command runs: the
/// command, or the QMP error (and the id to echo) for input that is not one.
pub fn parse_frame(frame: Frame) -> Result<Command, Rejected> {
    let rejected = |desc: String, id: Option<serde_json::Value>| Rejected {
        error: ErrorBody::generic(desc),
        id,
    };
    let text = match frame {
        Frame::Value(text) => text,
        Frame::Error(desc) => return Err(rejected(desc, None)),
    };
    let value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return Err(rejected(json_error_text(&text, &e), None)),
    };
    // QEMU rejects `exec-oob` like any unknown member unless the client
    // enabled the `oob` capability, which migtest-vmm never offers.
    if let serde_json::Value::Object(obj) = &value {
        if obj.contains_key("exec-oob") {
            let desc = "QMP input member 'exec-oob' is unexpected".to_string();
            return Err(rejected(desc, obj.get("id").cloned()));
        }
    }
    Command::from_value(value)
}

/// Capabilities negotiation, per connection: `Ok(true)` when `cmd` was an
/// accepted `qmp_capabilities` (now `negotiated`), `Ok(false)` when `cmd`
/// is to be dispatched, else QEMU's error for the connection's mode.
pub fn negotiate(negotiated: &mut bool, cmd: &mut Command) -> Result<bool, ErrorBody> {
    if cmd.name == "qmp_capabilities" {
        if *negotiated {
            return Err(ErrorBody::new(
                ErrorClass::CommandNotFound,
                "Capabilities negotiation is already complete, command ignored",
            ));
        }
        crate::commands::qmp_capabilities(cmd.arguments.take())?;
        *negotiated = true;
        return Ok(true);
    }
    if !*negotiated {
        return Err(ErrorBody::new(
            ErrorClass::CommandNotFound,
            "Expecting capabilities negotiation with 'qmp_capabilities'",
        ));
    }
    Ok(false)
}

fn negotiate_or_dispatch(
    session: &mut Session,
    dispatcher: &Dispatcher,
    mut cmd: Command,
) -> Result<Outcome, ErrorBody> {
    if negotiate(&mut session.negotiated, &mut cmd)? {
        dispatcher.vm().events().subscribe(&session.writer);
        return Ok(Outcome::Reply(serde_json::json!({})));
    }
    dispatcher.dispatch(&cmd.name, cmd.arguments)
}

/// QEMU's text for a complete value that does not parse: the wording of
/// QEMU's json-parser where serde_json's error maps onto it.
fn json_error_text(text: &str, e: &serde_json::Error) -> String {
    let t = text.trim_start();
    let word: String = t.chars().take_while(|c| c.is_ascii_lowercase()).collect();
    if !word.is_empty() && !["true", "false", "null"].contains(&word.as_str()) {
        return format!("JSON parse error, invalid keyword '{word}'");
    }
    let msg = e.to_string();
    let what = msg.split(" at line ").next().unwrap_or(&msg);
    let qemu = match what {
        "expected value" | "EOF while parsing a value" | "trailing comma" => "expecting value",
        "expected `:`" => "missing : in object pair",
        "key must be a string" => "key is not a string in object",
        "invalid escape" => "invalid escape sequence in string",
        "expected ident" => "invalid keyword",
        "recursion limit exceeded" => "JSON nesting depth limit exceeded",
        other => other,
    };
    format!("JSON parse error, {qemu}")
}
