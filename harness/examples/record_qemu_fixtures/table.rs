//! The recording as data: every QMP exchange, in order.

use std::path::Path;

use serde_json::{json, Value};

use super::{Exchange, Keep, On, Step};

/// One exchange.
fn x(on: On, steps: Vec<Step>, keep: Keep) -> Exchange {
    Exchange { on, steps, keep }
}

/// An exchange of commands without arguments.
fn queries(on: On, cmds: &[&'static str], name: &'static str, desc: &'static str) -> Exchange {
    let steps = cmds.iter().map(|c| Step::Cmd(c, Value::Null)).collect();
    x(on, steps, Keep::Fixture(name, desc))
}

/// An exchange of one command with arguments.
fn cmd(on: On, c: &'static str, args: Value, name: &'static str, desc: &'static str) -> Exchange {
    x(on, vec![Step::Cmd(c, args)], Keep::Fixture(name, desc))
}

fn events_on() -> Step {
    Step::CmdOk(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    )
}

fn qs() -> Step {
    Step::Cmd("query-status", Value::Null)
}

fn qm() -> Step {
    Step::Cmd("query-migrate", Value::Null)
}

/// Bad QMP input: name, description, bytes.
const BAD_INPUT: &[(&str, &str, &[u8])] = &[
    (
        "bad-input-invalid-json",
        "Syntactically invalid JSON.",
        b"{\"execute\": }\n",
    ),
    (
        "bad-input-invalid-keyword",
        "A bare word that is not a JSON keyword.",
        b"foo\n",
    ),
    (
        "bad-input-non-object-array",
        "A JSON array instead of an object.",
        b"[1, 2, 3]\n",
    ),
    (
        "bad-input-non-object-string",
        "A JSON string instead of an object.",
        b"\"query-status\"\n",
    ),
    (
        "bad-input-non-object-number",
        "A JSON number instead of an object.",
        b"42\n",
    ),
    (
        "bad-input-missing-execute",
        "An object without 'execute'.",
        b"{\"arguments\": {}}\n",
    ),
    ("bad-input-empty-object", "An empty object.", b"{}\n"),
    (
        "bad-input-execute-not-string",
        "'execute' is a number.",
        b"{\"execute\": 42}\n",
    ),
    (
        "bad-input-arguments-not-object",
        "'arguments' is an array.",
        b"{\"execute\": \"query-status\", \"arguments\": [1]}\n",
    ),
    (
        "bad-input-unknown-top-level-key",
        "An unexpected top-level member next to 'execute'.",
        b"{\"execute\": \"query-status\", \"foo\": 1}\n",
    ),
    (
        "bad-input-unterminated-string",
        "A string cut by the newline (control character inside a string).",
        b"{\"execute\n",
    ),
    (
        "bad-input-garbage-bytes",
        "Control and non-UTF-8 bytes.",
        b"\x01\x02garbage\xff\xfe\n",
    ),
    (
        "bad-input-exec-oob-without-capability",
        "exec-oob without the oob capability negotiated.",
        b"{\"exec-oob\": \"migrate-pause\"}\n",
    ),
    (
        "bad-input-execute-and-exec-oob",
        "Both execute and exec-oob.",
        b"{\"execute\": \"query-status\", \"exec-oob\": \"query-status\"}\n",
    ),
];

/// Whole command objects and the fixture each makes.
fn command_errors() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "bad-command-unknown",
            "An unknown command.",
            json!({"execute": "no-such-command"}),
        ),
        (
            "bad-command-extra-argument",
            "An argument the command does not take.",
            json!({"execute": "query-status", "arguments": {"bogus": 1}}),
        ),
        (
            "bad-command-missing-argument",
            "A mandatory argument left out.",
            json!({"execute": "migrate-set-capabilities", "arguments": {}}),
        ),
        (
            "bad-command-wrong-argument-type",
            "An argument of the wrong JSON type.",
            json!({"execute": "migrate", "arguments": {"uri": 5}}),
        ),
        (
            "bad-command-wrong-enum-value",
            "A capability name that is not in the enum.",
            json!({"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "bogus", "state": true}]}}),
        ),
        (
            "id-echo-string",
            "A string id is echoed in the reply.",
            json!({"execute": "query-status", "id": "abc-1"}),
        ),
        (
            "id-echo-object",
            "Any JSON id (here an object) is echoed, also in error replies.",
            json!({"execute": "no-such-command", "id": {"seq": [1, 2], "tag": null}}),
        ),
        (
            "id-echo-number",
            "A number id is echoed.",
            json!({"execute": "query-name", "id": 7}),
        ),
    ]
}

/// `migrate-set-parameters` arguments and the fixture each makes.
fn parameter_cases() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "migrate-set-parameters-downtime-too-large",
            "downtime-limit above 2000 s.",
            json!({"downtime-limit": 2_000_001u64}),
        ),
        (
            "migrate-set-parameters-downtime-max",
            "downtime-limit at the maximum (accepted).",
            json!({"downtime-limit": 2_000_000u64}),
        ),
        (
            "migrate-set-parameters-max-bandwidth-negative",
            "max-bandwidth negative (QEMU 7.2 accepts it as 2^64-1 for backward compatibility).",
            json!({"max-bandwidth": -1}),
        ),
        (
            "migrate-set-parameters-max-bandwidth-too-large",
            "max-bandwidth 2^64-1 (accepted: the SIZE_MAX check cannot trigger on 64-bit hosts).",
            json!({"max-bandwidth": 18446744073709551615u64}),
        ),
        (
            "migrate-set-parameters-unknown",
            "An unknown parameter.",
            json!({"bogus-parameter": 1}),
        ),
        (
            "migrate-set-parameters-wrong-type",
            "downtime-limit as a string.",
            json!({"downtime-limit": "300"}),
        ),
        (
            "migrate-set-parameters-throttle-initial-zero",
            "cpu-throttle-initial 0 (range 1-99).",
            json!({"cpu-throttle-initial": 0}),
        ),
        (
            "migrate-set-parameters-ok",
            "Valid parameters (downtime-limit, max-bandwidth).",
            json!({"downtime-limit": 300, "max-bandwidth": 134217728u64}),
        ),
        (
            "migrate-set-parameters-empty",
            "No parameters at all.",
            json!({}),
        ),
    ]
}

/// The whole recording, in order: three VM groups (a lone VM started with
/// `-S`; a throttled migration that is cancelled; a full live migration).
pub fn exchanges(work: &Path) -> Vec<Exchange> {
    use On::{Dst, Single, Src};
    use Step::*;
    let null = || Value::Null;
    let uri1 = format!("unix:{}", work.join("mig1.sock").display());
    let uri2 = format!("unix:{}", work.join("mig2.sock").display());
    let bad_dst = format!("unix:{}", work.join("no-such-dir/mig.sock").display());
    let mut t = vec![
        // --- VM 1: `single`, started with -S (prelaunch) ---
        x(
            Single,
            vec![Launch("single", None, true)],
            Keep::Fixture("greeting", "The greeting QEMU sends on connect."),
        ),
        queries(
            Single,
            &["query-status"],
            "bad-command-before-capabilities",
            "A command before qmp_capabilities (capabilities negotiation mode).",
        ),
        cmd(
            Single,
            "qmp_capabilities",
            json!({"enable": ["bogus"]}),
            "bad-qmp-capabilities-unknown-enable",
            "qmp_capabilities with an unknown capability in 'enable' (still in negotiation mode afterwards).",
        ),
        queries(Single, &["qmp_capabilities"], "qmp_capabilities", "Leaving capabilities negotiation mode."),
        queries(
            Single,
            &["qmp_capabilities"],
            "bad-qmp-capabilities-twice",
            "qmp_capabilities again after negotiation completed.",
        ),
        queries(Single, &["query-version"], "query-version", "query-version."),
        queries(
            Single,
            &["query-status"],
            "query-status-prelaunch",
            "query-status of a VM started with -S.",
        ),
        queries(Single, &["query-name"], "query-name", "query-name of a VM started with -name single."),
        queries(
            Single,
            &["query-migrate"],
            "query-migrate-none",
            "query-migrate before any migration (status none: empty object).",
        ),
        queries(
            Single,
            &["query-migrate-parameters"],
            "query-migrate-parameters",
            "Default migration parameters.",
        ),
        queries(
            Single,
            &["query-migrate-capabilities"],
            "query-migrate-capabilities",
            "Default migration capabilities.",
        ),
        x(
            Single,
            vec![Cmd("query-commands", null())],
            Keep::CommandNames(
                "query-commands",
                "Sorted command names from query-commands (after qmp_capabilities).",
            ),
        ),
    ];
    // Some inputs produce several errors; the sync collects them all.
    for (name, desc, bytes) in BAD_INPUT {
        t.push(x(
            Single,
            vec![Raw(bytes.to_vec(), None, name, 10)],
            Keep::Fixture(name, desc),
        ));
    }
    // Nesting deeper than the parser allows (MAX_NESTING 1024).
    let deep = format!("{}{}\n", "[".repeat(1100), "]".repeat(1100));
    t.push(x(
        Single,
        vec![Raw(
            deep.into_bytes(),
            Some("1100 nested '[' then 1100 ']'"),
            "too-deep",
            30,
        )],
        Keep::Fixture(
            "bad-input-too-deep",
            "An array nested 1100 levels deep (the limit is 1024).",
        ),
    ));
    // Too many tokens (MAX_TOKEN_COUNT 2 Mi).
    let many = format!("[{}0]\n", "0,".repeat(1_100_000));
    let note = "a one-line array of 1,100,001 zeros (2,200,003 tokens)";
    t.push(x(
        Single,
        vec![Raw(many.into_bytes(), Some(note), "too-many-tokens", 120)],
        Keep::Fixture(
            "bad-input-too-many-tokens",
            "One 2.2 MB line with more than 2 Mi JSON tokens.",
        ),
    ));
    t.push(queries(
        Single,
        &["query-status"],
        "query-status-after-bad-input",
        "The monitor still works after all the bad input.",
    ));
    for (name, desc, v) in command_errors() {
        t.push(x(Single, vec![Exec(v)], Keep::Fixture(name, desc)));
    }
    for (name, desc, args) in parameter_cases() {
        let mut steps = vec![Cmd("migrate-set-parameters", args)];
        if name.contains("max-bandwidth") {
            // show what QEMU made of the value
            steps.push(Cmd("query-migrate-parameters", null()));
        }
        t.push(x(Single, steps, Keep::Fixture(name, desc)));
    }
    t.extend([
        x(Single, vec![Cmd("query-migrate-parameters", null())], Keep::Discard),
        cmd(
            Single,
            "migrate-continue",
            json!({"state": "pre-switchover"}),
            "migrate-continue-wrong-state",
            "migrate-continue with no migration (state none).",
        ),
        cmd(
            Single,
            "migrate-incoming",
            json!({"uri": "unix:/tmp/x.sock"}),
            "migrate-incoming-without-defer",
            "migrate-incoming on a VM not started with -incoming defer.",
        ),
        queries(Single, &["migrate_cancel"], "migrate-cancel-none", "migrate_cancel with no migration."),
        cmd(
            Single,
            "migrate",
            json!({"uri": "bogus:foo"}),
            "migrate-bad-uri",
            "migrate with an unknown URI scheme.",
        ),
        // --- run state edge cases ---
        x(
            Single,
            vec![Cmd("stop", null()), Drain(200), qs()],
            Keep::Fixture("stop-in-prelaunch", "stop while in prelaunch (-S)."),
        ),
        x(
            Single,
            vec![Cmd("cont", null()), Drain(300), qs()],
            Keep::Fixture("cont-from-prelaunch", "cont from prelaunch: RESUME event, status running."),
        ),
        x(
            Single,
            vec![SerialB, Cmd("cont", null())],
            Keep::Fixture("cont-while-running", "cont while already running."),
        ),
        x(
            Single,
            vec![Cmd("stop", null()), Drain(300), qs()],
            Keep::Fixture("stop-while-running", "stop while running: STOP event, status paused."),
        ),
        queries(Single, &["query-status"], "query-status-paused", "query-status after stop."),
        x(
            Single,
            vec![Cmd("stop", null()), Drain(200)],
            Keep::Fixture("stop-while-paused", "stop while already paused."),
        ),
        x(
            Single,
            vec![Cmd("cont", null()), Drain(300), qs()],
            Keep::Fixture("cont-from-paused", "cont from paused: RESUME event, status running."),
        ),
        queries(Single, &["query-status"], "query-status-running", "query-status of a running guest."),
        // --- failed migration: the destination socket does not exist ---
        x(
            Single,
            vec![events_on(), Cmd("query-migrate-capabilities", null())],
            Keep::Fixture(
                "migrate-set-capabilities-events",
                "Turning the events capability on (no migration running), then query-migrate-capabilities.",
            ),
        ),
        x(
            Single,
            vec![Cmd("migrate", json!({"uri": bad_dst})), Drain(500), Poll(&["failed"], 10), qs()],
            Keep::Fixture(
                "migrate-failed-bad-destination",
                "migrate to a unix socket that does not exist (events capability on): \
                 MIGRATION events, query-migrate status failed with error-desc, guest keeps running.",
            ),
        ),
        x(Single, vec![Close], Keep::Discard),
        // --- VMs 2+3: a throttled migration that is cancelled ---
        x(
            Dst,
            vec![Launch("dst1", Some(uri1.clone()), false), Cmd("qmp_capabilities", null())],
            Keep::Discard,
        ),
        queries(
            Dst,
            &["query-status"],
            "query-status-inmigrate",
            "query-status of a VM started with -incoming unix:PATH.",
        ),
        queries(
            Dst,
            &["query-migrate"],
            "query-migrate-dst-waiting",
            "query-migrate on a destination waiting for the incoming connection.",
        ),
        cmd(
            Dst,
            "migrate-incoming",
            json!({"uri": uri1}),
            "migrate-incoming-already-started",
            "migrate-incoming on a VM started with -incoming unix:PATH (not defer).",
        ),
        queries(
            Dst,
            &["stop", "query-status", "cont", "query-status"],
            "stop-cont-inmigrate",
            "stop then cont on an incoming VM (they only clear/set autostart; status stays inmigrate).",
        ),
        x(Dst, vec![events_on()], Keep::Discard),
        x(
            Src,
            vec![
                Launch("src1", None, false),
                Cmd("qmp_capabilities", null()),
                events_on(),
                Cmd("migrate-set-parameters", json!({"max-bandwidth": 4 * 1024 * 1024})),
            ],
            Keep::Discard,
        ),
        x(
            Src,
            vec![SerialB, Cmd("migrate", json!({"uri": uri1})), qm()],
            Keep::Fixture(
                "migrate-start-and-first-query",
                "migrate (max-bandwidth 4 MiB/s, events on) and the query-migrate right after it \
                 (status setup or active, whichever QEMU reports first).",
            ),
        ),
        x(
            Src,
            vec![Poll(&["active"], 10), Let(500), qm()],
            Keep::Fixture(
                "query-migrate-active",
                "query-migrate during a throttled migration (status active, with ram stats).",
            ),
        ),
        queries(
            Src,
            &["query-status"],
            "query-status-running-during-migration",
            "query-status on the source while migrating.",
        ),
        cmd(
            Src,
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "xbzrle", "state": true}]}),
            "migrate-set-capabilities-during-migration",
            "migrate-set-capabilities while a migration is active.",
        ),
        cmd(
            Src,
            "migrate",
            json!({"uri": uri1}),
            "migrate-while-active",
            "A second migrate while one is active.",
        ),
        cmd(
            Src,
            "migrate-continue",
            json!({"state": "pre-switchover"}),
            "migrate-continue-while-active",
            "migrate-continue while active (not in pre-switchover).",
        ),
        cmd(
            Src,
            "migrate-set-parameters",
            json!({"max-bandwidth": 8 * 1024 * 1024}),
            "migrate-set-parameters-during-migration",
            "migrate-set-parameters max-bandwidth during a migration (allowed).",
        ),
        x(
            Dst,
            vec![Drain(200), qm(), qs()],
            Keep::Fixture(
                "query-migrate-dst-active",
                "query-migrate and query-status on the destination during the migration.",
            ),
        ),
        x(
            Src,
            vec![Cmd("migrate_cancel", null()), Drain(300), Poll(&["cancelled"], 10), qs()],
            Keep::Fixture(
                "migrate-cancel",
                "migrate_cancel of the active migration: MIGRATION events, status cancelled, guest keeps running.",
            ),
        ),
        x(
            Dst,
            vec![Drain(2000), Exit(5)],
            Keep::Fixture(
                "migrate-cancel-dst",
                "What the destination reports after the source cancelled (events, then process exit and stderr).",
            ),
        ),
        x(Dst, vec![Close], Keep::Discard),
        x(Src, vec![Close], Keep::Discard),
        // --- VMs 4+5: a full live migration ---
        x(
            Dst,
            vec![Launch("dst2", Some(uri2.clone()), false), Cmd("qmp_capabilities", null()), events_on()],
            Keep::Discard,
        ),
        x(
            Src,
            vec![
                Launch("src2", None, false),
                Cmd("qmp_capabilities", null()),
                events_on(),
                Cmd(
                    "migrate-set-parameters",
                    json!({"max-bandwidth": 1u64 << 30, "downtime-limit": 1000}),
                ),
            ],
            Keep::Discard,
        ),
        x(
            Src,
            vec![
                SerialB,
                Cmd("migrate", json!({"uri": uri2})),
                DrainUntil(60, "MIGRATION", &["completed", "failed"]),
                Poll(&["completed"], 60),
                qs(),
                Drain(300),
            ],
            Keep::EventsAndAll(
                (
                    "migration-events-src",
                    "Events on the source of one full live migration (events capability on, \
                     max-bandwidth 1 GiB/s, downtime-limit 1000 ms).",
                ),
                (
                    "migration-full-src",
                    "Full source transcript: migrate, events, query-migrate completed, query-status postmigrate.",
                ),
            ),
        ),
        x(
            Dst,
            vec![DrainUntil(10, "RESUME", &[]), Drain(500), qm(), qs()],
            Keep::EventsAndAll(
                (
                    "migration-events-dst",
                    "Events on the destination of the same migration (events capability on).",
                ),
                (
                    "migration-full-dst",
                    "Full destination transcript: events, query-migrate completed, query-status running.",
                ),
            ),
        ),
        queries(
            Src,
            &["query-migrate"],
            "query-migrate-completed-src",
            "query-migrate on the source after completion (full stats).",
        ),
        queries(
            Src,
            &["query-status"],
            "query-status-postmigrate",
            "query-status on the source after a completed migration.",
        ),
        queries(
            Dst,
            &["query-migrate"],
            "query-migrate-completed-dst",
            "query-migrate on the destination after completion.",
        ),
        queries(
            Dst,
            &["query-status"],
            "query-status-running-after-migration",
            "query-status on the destination after a completed migration.",
        ),
        // The migrated guest runs on and its memory holds the A-B invariant.
        x(Dst, vec![SerialGrows, CheckAb], Keep::Discard),
        cmd(
            Src,
            "migrate",
            json!({"uri": uri2}),
            "migrate-after-completed",
            "migrate again from a source in postmigrate (the destination socket is gone).",
        ),
        x(Src, vec![Drain(500), qm()], Keep::Discard),
        x(
            Src,
            vec![Cmd("cont", null()), Drain(300), qs()],
            Keep::Fixture("cont-from-postmigrate", "cont on the source after a completed migration."),
        ),
    ]);
    t
}
