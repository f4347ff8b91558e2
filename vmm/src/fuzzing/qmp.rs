//! The `qmp_server_input` check: arbitrary bytes on a QMP connection, split,
//! parsed and answered as the VMM's server does (`server::serve_connection`),
//! as far as that is possible without a running VM.
//!
//! Per input: the streaming splitter cuts the bytes into frames; each frame
//! becomes a command or a QMP error ([`server::parse_frame`]); capabilities
//! negotiation follows the connection's state ([`server::negotiate`]); the
//! migration commands run on a real [`Migration`] of an in-memory host that
//! is `postmigrate` and was never given `-incoming` (so `migrate` and
//! `migrate-incoming` read their arguments and are then refused, starting no
//! thread and binding no socket); the other commands only read their
//! arguments, as their handlers do first. What must hold:
//!
//! - no panic; the splitter gives the same frames whether the bytes come in
//!   one read or one byte at a time, with the server's size bound and with
//!   a small one; no frame exceeds its bound;
//! - every frame yields exactly one reply: a `return` or an error with a
//!   known class and a text, which is one line of valid JSON that reads back
//!   as the same message.

use crate::commands::{self, PmemsaveArgs, COMMANDS};
use crate::fuzzing::stream::STREAM_GUEST_RAM;
use crate::migration::testing::TestHost;
use crate::migration::{Migration, MigrationUri};
use crate::server;
use migtest_qmp::args::Args;
use migtest_qmp::framing::{Frame, JsonSplitter, MAX_MESSAGE_BYTES};
use migtest_qmp::message::{Command, Rejected};
use migtest_qmp::schema::RunState;
use migtest_qmp::{ErrorBody, ErrorClass, ServerMessage};
use serde_json::{json, Value};

/// A small message bound, so inputs of a few KiB reach the overflow paths.
const SMALL_LIMIT: usize = 64;

/// The classes a reply may carry.
const CLASSES: [ErrorClass; 5] = [
    ErrorClass::GenericError,
    ErrorClass::CommandNotFound,
    ErrorClass::DeviceNotActive,
    ErrorClass::DeviceNotFound,
    ErrorClass::KVMMissingCap,
];

/// Runs the `qmp_server_input` check on one input (see the module docs).
pub fn check_qmp_server_input(data: &[u8]) {
    split(data, SMALL_LIMIT);
    let frames = split(data, MAX_MESSAGE_BYTES);
    let (_host, migration) = TestHost::new(1, RunState::Postmigrate);
    let mut negotiated = false;
    for frame in frames {
        let reply = match server::parse_frame(frame) {
            Err(Rejected { error, id }) => ServerMessage::Error { error, id },
            Ok(mut cmd) => {
                let id = cmd.id.clone();
                match respond(&mut negotiated, &mut cmd, &migration) {
                    Ok(value) => ServerMessage::Return { value, id },
                    Err(error) => ServerMessage::Error { error, id },
                }
            }
        };
        check_reply(&reply);
    }
}

/// Splits `data` whole and byte by byte with the bound `max`; both must agree.
fn split(data: &[u8], max: usize) -> Vec<Frame> {
    let whole = JsonSplitter::new(max).feed(data);
    let mut s = JsonSplitter::new(max);
    let bytewise: Vec<Frame> = data
        .iter()
        .flat_map(|b| s.feed(std::slice::from_ref(b)))
        .collect();
    assert_eq!(whole, bytewise, "frames depend on how the input was read");
    let mut total = 0;
    for f in &whole {
        match f {
            Frame::Value(text) => {
                assert!(
                    text.len() <= max,
                    "a {}-byte frame passed the {max}-byte bound",
                    text.len()
                );
                total += text.len();
            }
            Frame::Error(desc) => assert!(!desc.is_empty(), "a frame error without text"),
        }
    }
    // Quote conversion at most doubles a byte.
    assert!(
        total <= 2 * data.len(),
        "frames of {total} bytes from {} bytes",
        data.len()
    );
    whole
}

/// The server's answer to one parsed command.
fn respond(negotiated: &mut bool, cmd: &mut Command, m: &Migration) -> Result<Value, ErrorBody> {
    if server::negotiate(negotiated, cmd)? {
        return Ok(json!({}));
    }
    let args = Args::new(cmd.arguments.take());
    let name = cmd.name.as_str();
    if matches!(name, "migrate" | "migrate-incoming") {
        check_uri(&args);
    }
    match name {
        "migrate" => m.migrate(args),
        "migrate-incoming" => m.migrate_incoming(args),
        "migrate-continue" => m.migrate_continue(args),
        "migrate-set-parameters" => m.set_parameters(args),
        "migrate-set-capabilities" => m.set_capabilities(args),
        "migrate_cancel" => args.finish().and_then(|()| m.migrate_cancel()),
        "query-migrate" => args.finish().and_then(|()| m.query_migrate()),
        "query-migrate-parameters" => args.finish().and_then(|()| m.query_parameters()),
        "query-migrate-capabilities" => args.finish().and_then(|()| m.query_capabilities()),
        "pmemsave" => {
            PmemsaveArgs::parse(args)?.range(STREAM_GUEST_RAM)?;
            Ok(json!({}))
        }
        "query-commands" | "query-version" | "query-name" | "query-status" | "query-kvm"
        | "stop" | "cont" | "quit" => args.finish().map(|()| json!({})),
        other => {
            assert!(
                !COMMANDS.contains(&other),
                "`{other}` is served but the fuzz check does not answer it"
            );
            Err(commands::command_not_found(other))
        }
    }
}

/// The migration URI parser on a `uri` argument, whatever state refuses it.
fn check_uri(args: &Args) {
    let mut probe = args.clone();
    if let Some(Value::String(uri)) = probe.opt_value("uri") {
        if let Err(e) = MigrationUri::parse(&uri) {
            assert!(!e.desc.is_empty(), "URI `{uri}` refused without a text");
        }
    }
}

/// One reply: a known class and a text when an error; one line of JSON
/// that reads back as the same message.
fn check_reply(msg: &ServerMessage) {
    if let ServerMessage::Error { error, .. } = msg {
        assert!(!error.desc.is_empty(), "an error reply without text");
        assert!(
            CLASSES.iter().any(|c| c.as_str() == error.class),
            "unknown error class {}",
            error.class
        );
    }
    let line = msg.to_line();
    let body = line.strip_suffix("\r\n").expect("replies end in CRLF");
    assert!(!body.contains('\n'), "a reply spans lines: {body}");
    let back = ServerMessage::parse(body).unwrap_or_else(|e| panic!("reply {body}: {e}"));
    assert_eq!(&back, msg, "a reply reads back as another message");
}
