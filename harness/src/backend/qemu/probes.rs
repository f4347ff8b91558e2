//! Parsing QMP capability probes: `switchover-hold`, command and capability
//! sets, the QEMU version.

use std::collections::BTreeSet;

use serde_json::Value;

/// The payload of a QMP reply: `reply["return"]` when present, else `reply`
/// itself (so both a whole reply and its `return` value are accepted).
fn payload(reply: &Value) -> &Value {
    reply.get("return").unwrap_or(reply)
}

/// Whether a `query-migrate-parameters` reply (or its `return` object) has a
/// `switchover-hold` parameter. QEMU 7.2 does not.
pub fn has_switchover_hold(query_migrate_parameters: &Value) -> bool {
    payload(query_migrate_parameters)
        .as_object()
        .is_some_and(|o| o.contains_key("switchover-hold"))
}

/// Command names from a `query-commands` reply (or its `return` array of
/// `{"name": ...}` objects). Non-conforming entries are skipped.
pub fn command_set(query_commands: &Value) -> BTreeSet<String> {
    payload(query_commands)
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Migration capability names from a `query-migrate-capabilities` reply (or
/// its `return` array of `{"capability": ..., "state": ...}`), with their
/// state.
pub fn migrate_capabilities(reply: &Value) -> Vec<(String, bool)> {
    payload(reply)
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| {
                    Some((
                        c.get("capability")?.as_str()?.to_string(),
                        c.get("state")?.as_bool()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `(major, minor, micro)` from a `query-version` reply (or its `return`),
/// or from the greeting's `QMP.version`.
pub fn qemu_version(reply: &Value) -> Option<(u64, u64, u64)> {
    let p = payload(reply);
    let v = p.get("QMP").and_then(|q| q.get("version")).unwrap_or(p);
    let q = v.get("qemu")?;
    Some((
        q.get("major")?.as_u64()?,
        q.get("minor")?.as_u64()?,
        q.get("micro")?.as_u64()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    #[test]
    fn capability_probes() {
        let params = json!({"return": {"downtime-limit": 300, "max-bandwidth": 134217728}});
        assert!(!has_switchover_hold(&params));
        assert!(!has_switchover_hold(&params["return"]));
        let params = json!({"return": {"switchover-hold": false}});
        assert!(has_switchover_hold(&params));
        assert!(has_switchover_hold(&params["return"]));
        assert!(!has_switchover_hold(
            &json!({"error": {"class": "GenericError", "desc": "x"}})
        ));

        let cmds = json!({"return": [{"name": "migrate"}, {"name": "query-status"}, {"bogus": 1}, {"name": "migrate"}]});
        let set = command_set(&cmds);
        assert_eq!(
            set.into_iter().collect::<Vec<_>>(),
            vec!["migrate".to_string(), "query-status".to_string()]
        );
        assert!(command_set(&json!({"return": {}})).is_empty());

        let caps = json!({"return": [{"capability": "xbzrle", "state": false}, {"capability": "events", "state": true}]});
        assert_eq!(
            migrate_capabilities(&caps),
            vec![("xbzrle".into(), false), ("events".into(), true)]
        );

        let v = json!({"return": {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": "x"}});
        assert_eq!(qemu_version(&v), Some((7, 2, 22)));
        let g = json!({"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}});
        assert_eq!(qemu_version(&g), Some((7, 2, 22)));
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/qemu-7.2");

    fn fixture(name: &str) -> Value {
        let p = Path::new(FIXTURES).join(format!("{name}.json"));
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
    }

    /// The last reply (`return`/`error`) in a fixture transcript.
    fn last_reply(fx: &Value) -> Value {
        fx["transcript"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .filter_map(|e| e.get("recv"))
            .find(|r| r.get("return").is_some() || r.get("error").is_some())
            .cloned()
            .unwrap()
    }

    #[test]
    fn probes_on_qemu_7_2_fixtures() {
        let params = last_reply(&fixture("query-migrate-parameters"));
        assert!(!has_switchover_hold(&params));
        assert_eq!(params["return"]["downtime-limit"], 300);

        let names = fixture("query-commands")["commands"].clone();
        let as_reply = json!({"return": names
            .as_array()
            .unwrap()
            .iter()
            .map(|n| json!({"name": n}))
            .collect::<Vec<_>>()});
        let cmds = command_set(&as_reply);
        for c in [
            "qmp_capabilities",
            "migrate",
            "migrate_cancel",
            "migrate-continue",
            "migrate-incoming",
            "migrate-set-parameters",
            "migrate-set-capabilities",
            "query-migrate",
            "query-status",
            "pmemsave",
            "stop",
            "cont",
        ] {
            assert!(cmds.contains(c), "{c}");
        }

        let caps = migrate_capabilities(&last_reply(&fixture("query-migrate-capabilities")));
        assert!(caps.contains(&("events".to_string(), false)));
        assert!(caps.iter().all(|(c, _)| c != "switchover-hold"));

        let greeting = &fixture("greeting")["transcript"][0]["recv"];
        assert_eq!(qemu_version(greeting), Some((7, 2, 22)));
        assert_eq!(
            qemu_version(&last_reply(&fixture("query-version"))),
            Some((7, 2, 22))
        );
    }

    #[test]
    fn qemu_7_2_fixtures_are_self_consistent() {
        let mut n = 0;
        for e in std::fs::read_dir(FIXTURES).unwrap() {
            let p = e.unwrap().path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            n += 1;
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert_eq!(
                v["name"].as_str(),
                p.file_stem().and_then(|s| s.to_str()),
                "{}",
                p.display()
            );
            assert!(v["description"].is_string(), "{}", p.display());
            for entry in v["transcript"].as_array().into_iter().flatten() {
                if let Some(line) = entry.get("line").and_then(Value::as_str) {
                    let parsed: Value = serde_json::from_str(line).unwrap();
                    assert_eq!(&parsed, &entry["recv"], "{}", p.display());
                }
            }
        }
        assert!(n >= 80, "only {n} fixtures");
    }
}
