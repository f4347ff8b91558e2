//! Tests of the guest-image parser and layout.

use super::*;

const SWEEP: &str = r#"
name = "sweep"
description = "A-B"
[workload]
kind = "sweep"
start = "1M"
end = "100M"
pass-delay = 500
[secondary]
kind = "hotset"
region = "8M"
pages = 4
"#;

fn err(text: &str) -> String {
    GuestImage::parse_named(text, "t.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn parses_full_image() {
    let img = GuestImage::parse(SWEEP).unwrap();
    assert_eq!(img.name, "sweep");
    assert_eq!(img.workload.start, MIB);
    assert_eq!(img.workload.end, 100 * MIB);
    assert_eq!(
        img.workload.spec,
        WorkloadSpec::Sweep(SweepParams {
            pass_delay_us: 500,
            fill: false
        })
    );
    let sec = img.secondary.unwrap();
    assert_eq!(sec.region, 8 * MIB);
    assert_eq!(
        sec.spec,
        WorkloadSpec::Hotset(HotsetParams {
            pages: 4,
            round_delay_us: 1000,
            report_every: 100,
            scribble: 0,
        })
    );
}

#[test]
fn sizes() {
    let ok = |v: Value| parse_size(&v).unwrap();
    assert_eq!(ok(Value::Integer(4096)), 4096);
    assert_eq!(ok(Value::String("64k".into())), 64 << 10);
    assert_eq!(ok(Value::String("100M".into())), 100 << 20);
    assert_eq!(ok(Value::String("2G".into())), 2 << 30);
    assert_eq!(ok(Value::String("1T".into())), 1 << 40);
    for bad in [
        "",
        "M",
        "1X",
        "1.5M",
        "-1M",
        "99999999999999999999",
        "16777216T",
    ] {
        assert!(parse_size(&Value::String(bad.into())).is_err(), "{bad}");
    }
    assert!(parse_size(&Value::Integer(-1)).is_err());
    assert!(parse_size(&Value::Boolean(true)).is_err());
}

#[test]
fn layout_with_room() {
    let img = GuestImage::parse(SWEEP).unwrap();
    assert_eq!(img.test_range(128 * MIB), (MIB, 100 * MIB));
    let l = img.layout(128 * MIB, 3).unwrap();
    assert_eq!(l.secondary_region, Some((120 * MIB, 128 * MIB)));
    assert_eq!((l.vcpus[0].start, l.vcpus[0].end), (MIB, 100 * MIB));
    assert_eq!((l.vcpus[1].start, l.vcpus[1].end), (120 * MIB, 124 * MIB));
    assert_eq!((l.vcpus[2].start, l.vcpus[2].end), (124 * MIB, 128 * MIB));
}

#[test]
fn layout_clipped_to_small_ram() {
    let img = GuestImage::parse(SWEEP).unwrap();
    // 64 MiB: region stays 8M (<= 16M); sweep stops below it.
    assert_eq!(img.test_range(64 * MIB), (MIB, 56 * MIB));
    // 16 MiB: region scaled to a quarter of RAM.
    assert_eq!(img.test_range(16 * MIB), (MIB, 12 * MIB));
    // test_range does not depend on -smp
    let l = img.layout(64 * MIB, 1).unwrap();
    assert_eq!(l.vcpus.len(), 1);
    assert_eq!((l.vcpus[0].start, l.vcpus[0].end), img.test_range(64 * MIB));
}

#[test]
fn layout_errors() {
    let img = GuestImage::parse_named(SWEEP, "sweep.toml").unwrap();
    // range outside RAM
    assert_eq!(img.test_range(MIB), (MIB, MIB));
    let e = img.layout(MIB, 1).unwrap_err().to_string();
    assert_eq!(
        e,
        "guest image `sweep` (sweep.toml): workload range [0x100000, 0x6400000) does not fit in RAM of 0x100000 bytes (usable below 0xc0000, the 0x40000-byte secondary region above)"
    );
    // more secondary vCPUs than pages in the region (1 MiB RAM -> 64 pages... use 2 MiB)
    let tiny = GuestImage::parse(&SWEEP.replace("start = \"1M\"", "start = 0")).unwrap();
    let e = tiny.layout(8 * PAGE, 4).unwrap_err().to_string();
    assert!(e.contains("fewer pages than the 3 secondary vCPUs"), "{e}");
    assert!(img.layout(128 * MIB, 0).is_err());
    assert!(img.layout(128 * MIB + 1, 1).is_err());
    assert!(img.layout(0, 1).is_err());
}

#[test]
fn no_secondary_means_idle_and_full_range() {
    let img = GuestImage::parse("name='i'\ndescription='d'\n[workload]\nkind='idle'\n").unwrap();
    assert_eq!(img.test_range(64 * MIB), (MIB, 64 * MIB));
    let l = img.layout(64 * MIB, 2).unwrap();
    assert_eq!(l.vcpus[1].spec, WorkloadSpec::Idle);
    assert_eq!(l.secondary_region, None);
}

#[test]
fn error_messages_name_file_and_key() {
    assert_eq!(
        err(&SWEEP.replace("pass-delay", "pass-dealy")),
        "t.toml: unknown key `workload.pass-dealy`"
    );
    assert_eq!(
        err(&format!("{SWEEP}\nextra = 1")),
        "t.toml: unknown key `secondary.extra`"
    );
    assert_eq!(
        err(&format!("colour = 1\n{SWEEP}")),
        "t.toml: unknown key `colour`"
    );
    assert_eq!(
        err(&SWEEP.replace("\"100M\"", "\"100Q\"")),
        "t.toml: bad value for `workload.end`: `100Q` has unknown suffix `Q` (expected K, M, G or T)"
    );
    assert_eq!(
        err(&SWEEP.replace("\"8M\"", "true")),
        "t.toml: bad value for `secondary.region`: expected a size (integer or string like \"100M\"), got boolean"
    );
    assert_eq!(
        err(&SWEEP.replace("pages = 4", "pages = 0")),
        "t.toml: bad value for `secondary.pages`: 0 is outside [1, 4096]"
    );
    assert_eq!(
        err(&SWEEP.replace("pass-delay = 500", "pass-delay = \"5\"")),
        "t.toml: bad value for `workload.pass-delay`: expected an integer, got string"
    );
    assert_eq!(
        err(&SWEEP.replace("\"sweep\"\nstart", "\"sweeep\"\nstart")),
        "t.toml: bad value for `workload.kind`: unknown workload `sweeep` (expected sweep, hotset, rate, random or idle)"
    );
    assert_eq!(
        err(&SWEEP.replace("\"100M\"", "\"1M\"")),
        "t.toml: bad value for `workload.end`: end 0x100000 must be above start 0x100000"
    );
    assert_eq!(
        err(&SWEEP.replace("name = \"sweep\"\n", "")),
        "t.toml: missing required key `name`"
    );
    assert_eq!(
        err(&SWEEP.replace("kind = \"hotset\"\n", "")),
        "t.toml: missing required key `secondary.kind`"
    );
    assert_eq!(
        err(&SWEEP.replace("name = \"sweep\"", "name = \"Sweep!\"")),
        "t.toml: bad value for `name`: `Sweep!` must be 1-64 characters of a-z, 0-9, '-', '_'"
    );
    assert!(err("name = ").starts_with("t.toml: invalid TOML: "));
    assert_eq!(
        err("name='x'\ndescription='d'\nworkload = 3\n"),
        "t.toml: bad value for `workload`: expected a table, got integer"
    );
}

#[test]
fn load_names_the_path() {
    let e = GuestImage::load("/nonexistent/img.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("cannot read guest image /nonexistent/img.toml: "),
        "{e}"
    );
}
