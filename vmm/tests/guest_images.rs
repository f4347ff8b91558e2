//! The shipped guest images parse and lay out; bad files are rejected with
//! errors naming the file and key.

mod guest_support;

use guest_support::{image, image_path, MIB};
use migtest_vmm::guest::image::WorkloadSpec;
use migtest_vmm::guest::GuestImage;

const IMAGES: [&str; 5] = ["sweep", "hotset", "rate", "random", "idle"];

#[test]
fn shipped_images_parse_and_fit_64m_to_1g() {
    for name in IMAGES {
        let img = image(name);
        assert_eq!(img.name, name);
        assert!(!img.description.is_empty());
        assert_eq!(img.workload.spec.kind(), name);
        for ram in [64 * MIB, 128 * MIB, 1024 * MIB] {
            for vcpus in 1..=4 {
                let layout = img.layout(ram, vcpus).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(layout.vcpus.len(), vcpus as usize);
                let (s, e) = img.test_range(ram);
                assert_eq!((layout.vcpus[0].start, layout.vcpus[0].end), (s, e));
                assert!(s < e && e <= ram, "{name} {ram}: [{s:#x}, {e:#x})");
                // secondary slices are disjoint from the test range and each other
                let mut prev_end = e;
                for plan in &layout.vcpus[1..] {
                    if plan.spec != WorkloadSpec::Idle {
                        assert!(
                            plan.start >= prev_end && plan.end <= ram,
                            "{name}: {plan:?}"
                        );
                        prev_end = plan.end;
                    }
                }
            }
        }
    }
}

#[test]
fn sweep_range_is_qemus_clipped_to_ram() {
    let img = image("sweep");
    assert_eq!(img.test_range(128 * MIB), (MIB, 100 * MIB));
    assert_eq!(img.test_range(64 * MIB), (MIB, 56 * MIB));
    let idle = image("idle");
    assert_eq!(idle.test_range(64 * MIB), (MIB, 64 * MIB));
}

#[test]
fn bad_files_name_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(image_path("sweep.toml")).unwrap();
    let cases = [
        (
            good.replace("pass-delay = 1000", "pass-delay = 1000\nspeed = 3"),
            "unknown key `workload.speed`",
        ),
        (
            good.replace("end = \"100M\"", "end = \"100 MB\""),
            "bad value for `workload.end`: `100 MB` has unknown suffix ` MB`",
        ),
        (
            good.replace("region = \"8M\"", "region = -5"),
            "bad value for `secondary.region`: size must not be negative, got -5",
        ),
        (
            good.replace("kind = \"hotset\"", "kind = 7"),
            "bad value for `secondary.kind`: expected a string, got integer",
        ),
        (
            good.replace("[workload]", "[workloads]"),
            "unknown key `workloads`",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let err = GuestImage::load(&path).unwrap_err().to_string();
        let want = format!("{}: {want}", path.display());
        assert!(err.starts_with(&want), "got: {err}\nwant: {want}");
    }
}

#[test]
fn range_outside_ram_is_a_layout_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("far.toml");
    std::fs::write(
        &path,
        "name = \"far\"\ndescription = \"d\"\n[workload]\nkind = \"sweep\"\nstart = \"200M\"\nend = \"300M\"\n",
    )
    .unwrap();
    let img = GuestImage::load(&path).unwrap();
    assert_eq!(img.test_range(64 * MIB), (64 * MIB, 64 * MIB));
    let err = img.layout(64 * MIB, 1).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "guest image `far` ({}): workload range [0xc800000, 0x12c00000) does not fit in RAM of 0x4000000 bytes (usable below 0x4000000)",
            path.display()
        )
    );
}
