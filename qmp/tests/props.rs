//! Property tests: framing and parsing never panic, messages round-trip.

use migtest_qmp::framing::{Frame, JsonSplitter};
use migtest_qmp::message::{Command, ServerMessage};
use migtest_qmp::{ErrorBody, Event, Timestamp};
use proptest::prelude::*;
use serde_json::{json, Value};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z'\"{}\\\\ -]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z-]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn splitter_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let mut s = JsonSplitter::new(256);
        for c in &chunks {
            for f in s.feed(c) {
                if let Frame::Value(v) = f {
                    prop_assert!(v.len() <= 512);
                    if let Ok(val) = serde_json::from_str::<Value>(&v) {
                        let _ = Command::from_value(val);
                    }
                }
            }
        }
    }

    #[test]
    fn server_parse_never_panics(line in ".{0,200}") {
        let _ = ServerMessage::parse(&line);
    }

    #[test]
    fn commands_round_trip_through_splitter(name in "[a-z_-]{1,20}", args in arb_json(), id in arb_json()) {
        let cmd = Command::with_args(&name, args).id(id);
        let mut s = JsonSplitter::default();
        let frames = s.feed(cmd.to_line().as_bytes());
        prop_assert_eq!(frames.len(), 1);
        let Frame::Value(text) = &frames[0] else { panic!("error frame {frames:?}") };
        let back = Command::from_value(serde_json::from_str(text).unwrap()).unwrap();
        prop_assert_eq!(back, cmd);
    }

    #[test]
    fn server_messages_round_trip(value in arb_json(), id in proptest::option::of(arb_json()),
                                  desc in ".{0,40}", secs in 0i64..1<<40, us in 0i64..1_000_000) {
        let msgs = vec![
            ServerMessage::Return { value: value.clone(), id: id.clone() },
            ServerMessage::Error { error: ErrorBody::generic(desc), id },
            ServerMessage::Event(Event { event: "MIGRATION".into(), data: Some(json!({"status": value})),
                timestamp: Timestamp { seconds: secs, microseconds: us } }),
        ];
        for m in msgs {
            let line = m.to_line();
            prop_assert!(line.ends_with("\r\n"));
            prop_assert_eq!(ServerMessage::parse(line.trim_end()).unwrap(), m);
        }
    }
}

#[test]
fn strict_server_side_errors() {
    let cases = [
        (json!([1]), "QMP input must be a JSON object"),
        (json!({"arguments": {}}), "QMP input lacks member 'execute'"),
        (
            json!({"execute": 1}),
            "QMP input member 'execute' must be a string",
        ),
        (
            json!({"execute": "x", "arguments": []}),
            "QMP input member 'arguments' must be an object",
        ),
        (
            json!({"execute": "x", "bogus": 1}),
            "QMP input member 'bogus' is unexpected",
        ),
    ];
    for (input, desc) in cases {
        let err = Command::from_value(input).unwrap_err();
        assert_eq!(err.error.desc, desc);
        assert_eq!(err.error.class, "GenericError");
    }
    let err = Command::from_value(json!({"execute": 1, "id": "x"})).unwrap_err();
    assert_eq!(err.id, Some(json!("x")));
}

#[test]
fn greeting_parses() {
    let line = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}"#;
    let ServerMessage::Greeting(g) = ServerMessage::parse(line).unwrap() else {
        panic!("not a greeting")
    };
    assert_eq!(g.version.qemu.minor, 2);
    assert_eq!(g.capabilities, vec!["oob"]);
}
