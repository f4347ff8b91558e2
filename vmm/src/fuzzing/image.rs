//! The `guest_image` check: guest-image text (`guest-images/*.toml`) parsed
//! as `-kernel IMAGE` and the harness read it, then laid out for a range of
//! RAM sizes and vCPU counts as a guest is built.
//!
//! What must hold: no panic; an error names the inline source; an accepted
//! image obeys the format's rules (name, description, a non-empty
//! page-aligned range); for every RAM size and vCPU count the layout is an
//! error or a plan per vCPU inside RAM: vCPU 0 on
//! [`GuestImage::test_range`] below the secondary region, vCPUs 1.. on
//! disjoint equal slices of that region (or idle without `[secondary]`); and
//! each vCPU's fresh workload state validates against its own plan (a
//! source's state is accepted by an identical destination).

use crate::guest::image::{GuestImage, GuestLayout, WorkloadSpec, INLINE_SOURCE};
use crate::guest::workload::Workload;
use crate::guest::{MAX_VCPUS, PAGE_SIZE};

const PAGE: u64 = PAGE_SIZE as u64;
const MIB: u64 = 1 << 20;

/// RAM sizes every accepted image is laid out for: tiny, around the 1M
/// default start, the recorded guests' size, common sizes, `-m`'s 64G
/// maximum, and sizes that are not whole pages.
pub const RAM_SIZES: [u64; 12] = [
    0,
    PAGE,
    MIB - PAGE,
    MIB + PAGE,
    1400 << 10,
    16 * MIB,
    128 * MIB,
    (1 << 30) + PAGE,
    64 << 30,
    MIB + 1,
    u64::MAX - PAGE + 1,
    u64::MAX,
];

/// vCPU counts every accepted image is laid out for.
pub const VCPU_COUNTS: [u32; 6] = [0, 1, 2, 3, 17, MAX_VCPUS];

/// Runs the `guest_image` check on one input (see the module docs).
pub fn check_guest_image(data: &[u8]) {
    // Image files are read as UTF-8 text; other bytes never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let image = match GuestImage::parse(text) {
        Ok(image) => image,
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(INLINE_SOURCE),
                "error without its source: {msg}"
            );
            return;
        }
    };
    check_image(&image);
    for ram in RAM_SIZES {
        let (start, end) = image.test_range(ram);
        assert!(
            start <= end,
            "test range [{start:#x}, {end:#x}) is reversed"
        );
        assert!(
            end <= ram,
            "test range ends at {end:#x} beyond RAM {ram:#x}"
        );
        for vcpus in VCPU_COUNTS {
            if let Ok(layout) = image.layout(ram, vcpus) {
                check_layout(&image, &layout, ram, vcpus);
            }
        }
    }
}

fn check_image(image: &GuestImage) {
    let name = &image.name;
    assert!(
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_".contains(&c)),
        "accepted name `{name}`"
    );
    let description = &image.description;
    assert!(
        description.len() <= 200 && !description.contains(['\n', '\r']),
        "accepted description {description:?}"
    );
    let w = &image.workload;
    assert!(
        w.start.div_ceil(PAGE) < w.end / PAGE,
        "accepted range [{:#x}, {:#x}) without a whole page",
        w.start,
        w.end
    );
    if let Some(s) = &image.secondary {
        assert!(
            s.region >= PAGE,
            "accepted a secondary region of {} bytes",
            s.region
        );
    }
}

fn check_layout(image: &GuestImage, layout: &GuestLayout, ram: u64, vcpus: u32) {
    let at = format!("`{}` with {ram:#x} bytes and {vcpus} vCPUs", image.name);
    assert!(
        ram > 0 && ram.is_multiple_of(PAGE),
        "{at}: laid out in RAM that is not whole pages"
    );
    assert_eq!(layout.vcpus.len(), vcpus as usize, "{at}: plans per vCPU");
    for (i, p) in layout.vcpus.iter().enumerate() {
        assert!(
            p.start <= p.end && p.end <= ram && p.start % PAGE == 0 && p.end % PAGE == 0,
            "{at}: vCPU {i} plan [{:#x}, {:#x}) is not whole pages inside RAM",
            p.start,
            p.end
        );
    }
    let main = layout.vcpus[0];
    assert!(main.start < main.end, "{at}: vCPU 0 has an empty range");
    assert_eq!(
        (main.start, main.end),
        image.test_range(ram),
        "{at}: vCPU 0 range"
    );
    assert_eq!(main.spec, image.workload.spec, "{at}: vCPU 0 workload");
    match (&image.secondary, layout.secondary_region) {
        (Some(sec), Some((base, top))) => {
            assert_eq!(top, ram, "{at}: secondary region ends below RAM");
            assert!(
                base % PAGE == 0 && main.end <= base,
                "{at}: secondary region overlaps vCPU 0"
            );
            let mut next = base;
            for (i, p) in layout.vcpus.iter().enumerate().skip(1) {
                assert_eq!(p.spec, sec.spec, "{at}: vCPU {i} workload");
                assert!(p.start == next && p.start < p.end, "{at}: vCPU {i} slice");
                next = p.end;
            }
            assert!(next <= top, "{at}: slices beyond the secondary region");
        }
        (None, None) => {
            for (i, p) in layout.vcpus.iter().enumerate().skip(1) {
                assert!(
                    p.spec == WorkloadSpec::Idle && p.start == p.end,
                    "{at}: vCPU {i} should idle"
                );
            }
        }
        (sec, region) => panic!("{at}: secondary {sec:?} but region {region:?}"),
    }
    for (i, plan) in layout.vcpus.iter().enumerate() {
        let w = Workload::new(*plan, i == 0);
        if let Err(e) = w.validate(w.state()) {
            panic!("{at}: vCPU {i}'s fresh state is refused by its own plan: {e}");
        }
    }
}
