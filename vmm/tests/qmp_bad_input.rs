//! Malformed QMP input against a real migtest-vmm: each kind gets its error
//! class and text (insta snapshots, timestamps redacted), and the connection
//! stays usable (`query-status` returns) after every one. Also the inputs
//! QEMU accepts although they look odd: single quotes, objects split across
//! lines, several objects on one line, any JSON value as `id`.

mod common;

use common::{redact, Qmp, Vmm};
use serde_json::{json, Value};
use std::time::Duration;

/// Sends `input`, then a fence; returns every message before the fence's
/// reply (timestamps redacted) and checks the connection still answers.
fn exchange(q: &mut Qmp, input: &[u8]) -> Vec<Value> {
    q.send_raw(input);
    q.send_raw(b"{\"execute\": \"query-status\", \"id\": \"fence\"}\n");
    let mut got = Vec::new();
    loop {
        let m = q.recv();
        if m.get("id") == Some(&json!("fence")) {
            assert!(m["return"]["status"].is_string(), "fence: {m}");
            return got;
        }
        got.push(redact(m));
    }
}

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let mut v: Vec<(&'static str, Vec<u8>)> = vec![
        ("invalid_json", b"{\"execute\": }\n".to_vec()),
        ("invalid_keyword", b"foo\n".to_vec()),
        ("non_object_number", b"42\n".to_vec()),
        ("non_object_string", b"\"query-status\"\n".to_vec()),
        ("array", b"[1, 2, 3]\n".to_vec()),
        ("missing_execute", b"{\"arguments\": {}}\n".to_vec()),
        ("execute_not_string", b"{\"execute\": 42}\n".to_vec()),
        (
            "arguments_not_object",
            b"{\"execute\": \"query-status\", \"arguments\": [1]}\n".to_vec(),
        ),
        (
            "unknown_top_level_key",
            b"{\"execute\": \"query-status\", \"foo\": 1}\n".to_vec(),
        ),
        ("exec_oob", b"{\"exec-oob\": \"query-status\"}\n".to_vec()),
        ("unknown_command", b"{\"execute\": \"no-such-command\"}\n".to_vec()),
        (
            "missing_argument",
            b"{\"execute\": \"migrate-set-capabilities\", \"arguments\": {}}\n".to_vec(),
        ),
        (
            "extra_argument",
            b"{\"execute\": \"query-status\", \"arguments\": {\"bogus\": 1}}\n".to_vec(),
        ),
        (
            "wrong_argument_type",
            b"{\"execute\": \"migrate\", \"arguments\": {\"uri\": 5}}\n".to_vec(),
        ),
        (
            "wrong_enum_value",
            br#"{"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "bogus", "state": true}]}}
"#
            .to_vec(),
        ),
        ("control_characters", b"\x01\x02garbage\xff\xfe\n".to_vec()),
        (
            "control_character_inside_object",
            b"{\"execute\": \"query-name\"\x01}\n".to_vec(),
        ),
        ("unterminated_string", b"{\"execute\n".to_vec()),
        ("empty_object", b"{}\n".to_vec()),
        ("missing_colon", b"{\"execute\" \"x\"}\n".to_vec()),
        ("unbalanced_close", b"}\n".to_vec()),
        (
            "single_quotes_work",
            b"{'execute': 'query-name', 'id': 'sq'}\n".to_vec(),
        ),
        (
            "split_across_lines_works",
            b"{\"execute\":\n  \"query-name\",\n \"id\": \"split\"\n}\n".to_vec(),
        ),
        (
            "two_objects_one_line",
            b"{\"execute\": \"query-name\", \"id\": 1}{\"execute\": \"query-name\", \"id\": 2}\n"
                .to_vec(),
        ),
        (
            "id_echo_string",
            b"{\"execute\": \"query-name\", \"id\": \"abc-1\"}\n".to_vec(),
        ),
        ("id_echo_number", b"{\"execute\": \"query-name\", \"id\": 7}\n".to_vec()),
        (
            "id_echo_object_on_error",
            b"{\"execute\": \"no-such-command\", \"id\": {\"seq\": [1, 2], \"tag\": null}}\n"
                .to_vec(),
        ),
        (
            "nesting_too_deep",
            format!("{}{}\n", "[".repeat(1100), "]".repeat(1100)).into_bytes(),
        ),
    ];
    // One value larger than the 1 MiB limit: one error, then back in sync.
    let mut big = b"{\"execute\": \"query-name\", \"id\": \"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 1 << 20));
    big.extend_from_slice(b"\"}\n");
    v.push(("oversize_message", big));
    v
}

#[test]
fn bad_input_replies_and_connection_survives() {
    let mut vmm = Vmm::start();
    let mut q = vmm.qmp();
    for (name, input) in cases() {
        let replies = exchange(&mut q, &input);
        assert!(!replies.is_empty(), "{name}: no reply");
        for r in &replies {
            if let Some(e) = r.get("error") {
                let class = e["class"].as_str().unwrap();
                assert!(
                    ["GenericError", "CommandNotFound"].contains(&class),
                    "{name}: {r}"
                );
            }
        }
        let value = if name == "nesting_too_deep" {
            // 1027 replies; snapshot the first three and the count.
            json!({"count": replies.len(), "first": replies[..3]})
        } else {
            Value::from(replies)
        };
        insta::assert_json_snapshot!(name, value);
        assert!(vmm.alive(), "{name} killed the VMM");
    }
    assert_eq!(q.status(), "running");
}

#[test]
fn malformed_input_on_one_connection_never_hurts_another() {
    let mut vmm = Vmm::start();
    let mut good = vmm.qmp();
    for (name, input) in cases() {
        // A fresh client sends garbage (some without negotiating), then
        // hangs up mid-message.
        let mut bad = vmm.connect();
        if name.len() % 2 == 0 {
            bad.ok("qmp_capabilities", None);
        }
        bad.send_raw(&input);
        bad.send_raw(b"{\"execute\": \"query-");
        drop(bad);
        assert_eq!(good.ok("query-name", None), json!({"name": "t"}), "{name}");
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(vmm.alive());
    assert_eq!(good.status(), "running");
}
