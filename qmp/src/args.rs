//! Strict extraction of command arguments with QEMU's error texts
//! (the wording of QEMU's `qobject-input-visitor`).
//!
//! Read every member the command knows, then call [`Args::finish`], which
//! rejects members nobody read, as QEMU does after visiting a struct.

use crate::message::ErrorBody;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// The arguments of one command (or one nested object) being read.
#[derive(Debug, Clone)]
pub struct Args {
    map: Map<String, Value>,
    seen: BTreeSet<String>,
    prefix: String,
}

impl Args {
    /// Arguments of a command; `None` means no `arguments` member.
    pub fn new(arguments: Option<Map<String, Value>>) -> Args {
        Args {
            map: arguments.unwrap_or_default(),
            seen: BTreeSet::new(),
            prefix: String::new(),
        }
    }

    /// A nested object found at `path` (e.g. `capabilities[0]`), for reading its members.
    pub fn nested(path: &str, map: Map<String, Value>) -> Args {
        Args {
            map,
            seen: BTreeSet::new(),
            prefix: format!("{path}."),
        }
    }

    fn full(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    fn missing(&self, name: &str) -> ErrorBody {
        ErrorBody::generic(format!("Parameter '{}' is missing", self.full(name)))
    }

    /// The QEMU text for a member of the wrong JSON type.
    pub fn type_error(&self, name: &str, expected: &str) -> ErrorBody {
        ErrorBody::generic(format!(
            "Invalid parameter type for '{}', expected: {}",
            self.full(name),
            expected
        ))
    }

    /// The QEMU text for a member whose value is out of its type's domain.
    pub fn value_error(&self, name: &str, expected: &str) -> ErrorBody {
        ErrorBody::generic(format!(
            "Parameter '{}' expects {}",
            self.full(name),
            expected
        ))
    }

    /// Whether the member is present (marks it as read).
    pub fn has(&mut self, name: &str) -> bool {
        self.seen.insert(name.to_string());
        self.map.contains_key(name)
    }

    /// An optional member of any JSON type.
    pub fn opt_value(&mut self, name: &str) -> Option<Value> {
        self.seen.insert(name.to_string());
        self.map.get(name).cloned()
    }

    /// An optional string member.
    pub fn opt_str(&mut self, name: &str) -> Result<Option<String>, ErrorBody> {
        match self.opt_value(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.type_error(name, "string")),
        }
    }

    /// A required string member.
    pub fn str(&mut self, name: &str) -> Result<String, ErrorBody> {
        self.opt_str(name)?.ok_or_else(|| self.missing(name))
    }

    /// An optional boolean member.
    pub fn opt_bool(&mut self, name: &str) -> Result<Option<bool>, ErrorBody> {
        match self.opt_value(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(self.type_error(name, "boolean")),
        }
    }

    /// A required boolean member.
    pub fn bool(&mut self, name: &str) -> Result<bool, ErrorBody> {
        self.opt_bool(name)?.ok_or_else(|| self.missing(name))
    }

    /// An optional unsigned integer member (QAPI `uint64`, `size`), read
    /// like QEMU's `qobject_input_type_uint64`: negative integers are
    /// accepted and wrap ("for backward compatibility", so `-1` is 2^64-1),
    /// and anything else, a string included, is `Parameter 'x' expects
    /// uint64` (not the "Invalid parameter type" text of other types).
    pub fn opt_u64(&mut self, name: &str, qapi_type: &str) -> Result<Option<u64>, ErrorBody> {
        match self.opt_value(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
                (Some(v), _) => Ok(Some(v)),
                (None, Some(v)) => Ok(Some(v as u64)),
                _ => Err(self.value_error(name, qapi_type)),
            },
            Some(_) => Err(self.value_error(name, qapi_type)),
        }
    }

    /// A required unsigned integer member.
    pub fn u64(&mut self, name: &str, qapi_type: &str) -> Result<u64, ErrorBody> {
        self.opt_u64(name, qapi_type)?
            .ok_or_else(|| self.missing(name))
    }

    /// An optional signed integer member (QAPI `int`).
    pub fn opt_i64(&mut self, name: &str) -> Result<Option<i64>, ErrorBody> {
        match self.opt_value(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) => Ok(Some(v)),
                None => Err(self.value_error(name, "int")),
            },
            Some(_) => Err(self.type_error(name, "integer")),
        }
    }

    /// A required signed integer member.
    pub fn i64(&mut self, name: &str) -> Result<i64, ErrorBody> {
        self.opt_i64(name)?.ok_or_else(|| self.missing(name))
    }

    /// A required array member.
    pub fn array(&mut self, name: &str) -> Result<Vec<Value>, ErrorBody> {
        match self.opt_value(name) {
            None => Err(self.missing(name)),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(self.type_error(name, "array")),
        }
    }

    /// An optional enum member, given the accepted names. As in QEMU's
    /// `input_type_enum`, a bad value is reported with the member's bare
    /// name (`'capability'`, not `'capabilities[0].capability'`).
    pub fn opt_enum(&mut self, name: &str, accepted: &[&str]) -> Result<Option<String>, ErrorBody> {
        match self.opt_str(name)? {
            None => Ok(None),
            Some(s) if accepted.contains(&s.as_str()) => Ok(Some(s)),
            Some(s) => Err(ErrorBody::generic(format!(
                "Parameter '{name}' does not accept value '{s}'"
            ))),
        }
    }

    /// A required enum member.
    pub fn enumeration(&mut self, name: &str, accepted: &[&str]) -> Result<String, ErrorBody> {
        self.opt_enum(name, accepted)?
            .ok_or_else(|| self.missing(name))
    }

    /// Rejects members that were never read.
    pub fn finish(self) -> Result<(), ErrorBody> {
        match self.map.keys().find(|k| !self.seen.contains(*k)) {
            Some(k) => Err(ErrorBody::generic(format!(
                "Parameter '{}' is unexpected",
                self.full(k)
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Args {
        match v {
            Value::Object(m) => Args::new(Some(m)),
            _ => unreachable!(),
        }
    }

    #[test]
    fn qemu_texts() {
        let mut a = args(json!({"val": "x", "extra": 1}));
        assert_eq!(
            a.i64("val").unwrap_err().desc,
            "Invalid parameter type for 'val', expected: integer"
        );
        assert_eq!(
            a.str("filename").unwrap_err().desc,
            "Parameter 'filename' is missing"
        );
        assert_eq!(
            a.finish().unwrap_err().desc,
            "Parameter 'extra' is unexpected"
        );
        let mut a = args(json!({"size": -1, "s": "300", "f": 1.5}));
        assert_eq!(a.u64("size", "uint64").unwrap(), u64::MAX);
        assert_eq!(
            a.u64("s", "uint64").unwrap_err().desc,
            "Parameter 's' expects uint64"
        );
        assert_eq!(
            a.u64("f", "size").unwrap_err().desc,
            "Parameter 'f' expects size"
        );
        let mut n = Args::nested("capabilities[0]", serde_json::Map::new());
        assert_eq!(
            n.str("capability").unwrap_err().desc,
            "Parameter 'capabilities[0].capability' is missing"
        );
    }

    #[test]
    fn enum_values() {
        let mut a = args(json!({"state": "bogus"}));
        assert_eq!(
            a.enumeration("state", &["active"]).unwrap_err().desc,
            "Parameter 'state' does not accept value 'bogus'"
        );
        let mut m = serde_json::Map::new();
        m.insert("capability".into(), json!("bogus"));
        let mut n = Args::nested("capabilities[0]", m);
        assert_eq!(
            n.enumeration("capability", &["events"]).unwrap_err().desc,
            "Parameter 'capability' does not accept value 'bogus'"
        );
    }
}
