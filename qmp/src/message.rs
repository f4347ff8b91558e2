//! QMP messages as they appear on the wire.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// `{"qemu": {"major", "minor", "micro"}, "package"}` as in `query-version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The version triple.
    pub qemu: VersionTriple,
    /// Free-form package string.
    #[serde(default)]
    pub package: String,
}

/// A QEMU version number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VersionTriple {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
}

/// The greeting a QMP server sends on connect: `{"QMP": {"version", "capabilities"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Greeting {
    /// Server version.
    pub version: VersionInfo,
    /// Protocol capabilities offered (e.g. `oob`).
    #[serde(default)]
    pub capabilities: Vec<String>,
}

impl Greeting {
    /// The wire form, `{"QMP": {...}}`.
    pub fn to_value(&self) -> Value {
        serde_json::json!({ "QMP": self })
    }
}

/// An event timestamp: seconds and microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    /// Whole seconds.
    pub seconds: i64,
    /// Microseconds within the second.
    pub microseconds: i64,
}

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            seconds: d.as_secs() as i64,
            microseconds: i64::from(d.subsec_micros()),
        }
    }
}

/// An asynchronous event, `{"event", "data"?, "timestamp"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Event name, e.g. `MIGRATION`.
    pub event: String,
    /// Event payload; absent for events such as `STOP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// When the event was emitted.
    pub timestamp: Timestamp,
}

impl Event {
    /// An event stamped with the current time.
    pub fn now(name: &str, data: Option<Value>) -> Event {
        Event {
            event: name.to_string(),
            data,
            timestamp: Timestamp::now(),
        }
    }
}

/// QMP error classes (`QapiErrorClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorClass {
    /// The catch-all class used by almost every error.
    GenericError,
    /// Unknown command, or a command not allowed in capabilities-negotiation mode.
    CommandNotFound,
    /// A device exists but is not active.
    DeviceNotActive,
    /// A device was not found.
    DeviceNotFound,
    /// KVM lacks a required capability.
    KVMMissingCap,
}

impl ErrorClass {
    /// The class name as it appears on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
        }
    }
}

/// The body of an error reply, `{"class", "desc"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error class (kept as a string on the client side so unknown classes survive).
    pub class: String,
    /// Human-readable description. Clients should not parse it.
    pub desc: String,
}

impl ErrorBody {
    /// An error of a known class.
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> ErrorBody {
        ErrorBody {
            class: class.as_str().to_string(),
            desc: desc.into(),
        }
    }

    /// A `GenericError`.
    pub fn generic(desc: impl Into<String>) -> ErrorBody {
        ErrorBody::new(ErrorClass::GenericError, desc)
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.desc)
    }
}

impl std::error::Error for ErrorBody {}

/// Any message a QMP server sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// The connect-time greeting.
    Greeting(Greeting),
    /// A successful reply.
    Return {
        /// The returned value (`{}` when a command has no data).
        value: Value,
        /// The command's `id`, echoed.
        id: Option<Value>,
    },
    /// An error reply.
    Error {
        /// The error.
        error: ErrorBody,
        /// The command's `id`, echoed when it was parsed.
        id: Option<Value>,
    },
    /// An asynchronous event.
    Event(Event),
}

/// Why a server line could not be understood by a client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Not valid JSON.
    #[error("invalid JSON from QMP server: {0}")]
    Json(String),
    /// Valid JSON, but not a QMP message.
    #[error("not a QMP message: {0}")]
    Shape(String),
}

impl ServerMessage {
    /// Classifies one line from a server. Unknown keys are ignored (clients
    /// must tolerate them); the message kind is decided by its key.
    pub fn parse(line: &str) -> Result<ServerMessage, ParseError> {
        let value: Value =
            serde_json::from_str(line).map_err(|e| ParseError::Json(e.to_string()))?;
        ServerMessage::from_value(value)
    }

    /// Classifies an already-parsed JSON value.
    pub fn from_value(value: Value) -> Result<ServerMessage, ParseError> {
        let Value::Object(mut obj) = value else {
            return Err(ParseError::Shape("top level is not an object".into()));
        };
        let id = obj.remove("id");
        if let Some(greeting) = obj.remove("QMP") {
            return serde_json::from_value(greeting)
                .map(ServerMessage::Greeting)
                .map_err(|e| ParseError::Shape(format!("bad greeting: {e}")));
        }
        if let Some(value) = obj.remove("return") {
            return Ok(ServerMessage::Return { value, id });
        }
        if let Some(error) = obj.remove("error") {
            let error = serde_json::from_value(error)
                .map_err(|e| ParseError::Shape(format!("bad error object: {e}")))?;
            return Ok(ServerMessage::Error { error, id });
        }
        if obj.contains_key("event") {
            return serde_json::from_value(Value::Object(obj))
                .map(ServerMessage::Event)
                .map_err(|e| ParseError::Shape(format!("bad event: {e}")));
        }
        Err(ParseError::Shape(
            "no QMP, return, error or event member".into(),
        ))
    }

    /// The wire form of this message.
    pub fn to_value(&self) -> Value {
        let mut obj = Map::new();
        match self {
            ServerMessage::Greeting(g) => return g.to_value(),
            ServerMessage::Return { value, id } => {
                obj.insert("return".into(), value.clone());
                if let Some(id) = id {
                    obj.insert("id".into(), id.clone());
                }
            }
            ServerMessage::Error { error, id } => {
                obj.insert("error".into(), serde_json::json!(error));
                if let Some(id) = id {
                    obj.insert("id".into(), id.clone());
                }
            }
            ServerMessage::Event(e) => return serde_json::json!(e),
        }
        Value::Object(obj)
    }

    /// One wire line, CRLF-terminated as QEMU writes it.
    pub fn to_line(&self) -> String {
        let mut s = self.to_value().to_string();
        s.push_str("\r\n");
        s
    }
}

/// A command, `{"execute": name, "arguments"?: {...}, "id"?: any}` (or `exec-oob`).
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The command name.
    pub name: String,
    /// The arguments object, if any.
    pub arguments: Option<Map<String, Value>>,
    /// The client's id, echoed in the reply.
    pub id: Option<Value>,
    /// Sent with `exec-oob` instead of `execute`.
    pub oob: bool,
}

/// A command the server refused before dispatch, with the id if it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// The error to send.
    pub error: ErrorBody,
    /// The id to echo, if the input had one.
    pub id: Option<Value>,
}

impl Command {
    /// A command with no arguments.
    pub fn new(name: &str) -> Command {
        Command {
            name: name.to_string(),
            arguments: None,
            id: None,
            oob: false,
        }
    }

    /// A command with an arguments object (non-object values are wrapped as no arguments).
    pub fn with_args(name: &str, args: Value) -> Command {
        let arguments = match args {
            Value::Object(m) => Some(m),
            _ => None,
        };
        Command {
            name: name.to_string(),
            arguments,
            id: None,
            oob: false,
        }
    }

    /// Sets the id.
    pub fn id(mut self, id: Value) -> Command {
        self.id = Some(id);
        self
    }

    /// The wire form.
    pub fn to_value(&self) -> Value {
        let mut obj = Map::new();
        let key = if self.oob { "exec-oob" } else { "execute" };
        obj.insert(key.into(), Value::String(self.name.clone()));
        if let Some(a) = &self.arguments {
            obj.insert("arguments".into(), Value::Object(a.clone()));
        }
        if let Some(id) = &self.id {
            obj.insert("id".into(), id.clone());
        }
        Value::Object(obj)
    }

    /// One wire line (LF-terminated).
    pub fn to_line(&self) -> String {
        let mut s = self.to_value().to_string();
        s.push('\n');
        s
    }

    /// Strict server-side interpretation of one input value, with QEMU's
    /// error texts for malformed requests.
    pub fn from_value(value: Value) -> Result<Command, Rejected> {
        let reject = |desc: String, id: Option<Value>| Rejected {
            error: ErrorBody::generic(desc),
            id,
        };
        let Value::Object(mut obj) = value else {
            return Err(reject("QMP input must be a JSON object".into(), None));
        };
        let id = obj.remove("id");
        let exec = obj.remove("execute");
        let exec_oob = obj.remove("exec-oob");
        let arguments = obj.remove("arguments");
        if let Some(key) = obj.keys().next() {
            return Err(reject(
                format!("QMP input member '{key}' is unexpected"),
                id,
            ));
        }
        let (name, oob) = match (exec, exec_oob) {
            (Some(_), Some(_)) => {
                return Err(reject(
                    "QMP input must not have both 'execute' and 'exec-oob'".into(),
                    id,
                ))
            }
            (None, None) => {
                return Err(reject("QMP input lacks member 'execute'".into(), id));
            }
            (Some(Value::String(s)), None) => (s, false),
            (None, Some(Value::String(s))) => (s, true),
            (Some(_), None) => {
                return Err(reject(
                    "QMP input member 'execute' must be a string".into(),
                    id,
                ))
            }
            (None, Some(_)) => {
                return Err(reject(
                    "QMP input member 'exec-oob' must be a string".into(),
                    id,
                ))
            }
        };
        let arguments = match arguments {
            None => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => {
                return Err(reject(
                    "QMP input member 'arguments' must be an object".into(),
                    id,
                ))
            }
        };
        Ok(Command {
            name,
            arguments,
            id,
            oob,
        })
    }
}
