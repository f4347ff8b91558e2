use super::*;

fn params() -> Parameters {
    Parameters::default()
}

#[test]
fn defaults_are_qemus() {
    let p = params();
    assert_eq!(
        (
            p.cpu_throttle_initial,
            p.cpu_throttle_increment,
            p.cpu_throttle_tailslow,
            p.max_cpu_throttle
        ),
        (20, 10, false, 99)
    );
    assert!(check_rates(&p).is_ok() && check_max(&p).is_ok());
}

#[test]
fn range_texts_are_qemu_7_2s() {
    let mut p = params();
    p.cpu_throttle_initial = 0;
    assert_eq!(
        check_rates(&p).unwrap_err().desc,
        "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99"
    );
    p.cpu_throttle_initial = 20;
    p.cpu_throttle_increment = 100;
    assert_eq!(
        check_rates(&p).unwrap_err().desc,
        "Parameter 'cpu_throttle_increment' expects an integer in the range of 1 to 99"
    );
    p.cpu_throttle_increment = 10;
    p.max_cpu_throttle = 19;
    assert_eq!(
        check_max(&p).unwrap_err().desc,
        "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"
    );
}

#[test]
fn every_range_value_against_the_rule() {
    for init in 0..=255u8 {
        for max in 0..=255u8 {
            let mut p = params();
            p.cpu_throttle_initial = init;
            p.max_cpu_throttle = max;
            let ok = check_rates(&p).is_ok() && check_max(&p).is_ok();
            assert_eq!(ok, (1..=99).contains(&init) && init <= max && max <= 99);
        }
    }
}

#[test]
fn throttle_starts_after_two_high_periods_and_steps_to_the_max() {
    let mut p = params();
    p.cpu_throttle_initial = 60;
    p.cpu_throttle_increment = 50;
    p.max_cpu_throttle = 95;
    let mut t = Trigger::default();
    let mut sent = 0;
    let mut pct = 0;
    let mut seen = Vec::new();
    for _ in 0..6 {
        // 1000 pages dirtied (4 MB) against 1 MB sent: over 50 %.
        sent += 1 << 20;
        t.dirtied(1000);
        if let Some(n) = t.period_end(true, (pct, &p), sent) {
            pct = n;
        }
        seen.push(pct);
    }
    assert_eq!(seen, [0, 60, 60, 95, 95, 95]);
}

#[test]
fn a_period_below_the_threshold_does_not_count() {
    let p = params();
    let mut t = Trigger::default();
    // 2 MB sent, 1 MB dirtied (= 50 %, not over it), twice: no throttle.
    let period = |t: &mut Trigger, dirty: u64, sent: u64| {
        t.dirtied(dirty);
        t.period_end(true, (0, &p), sent)
    };
    assert_eq!(period(&mut t, 256, 2 << 20), None);
    assert_eq!(period(&mut t, 256, 4 << 20), None);
    // A high period after low ones, then another high one: starts.
    assert_eq!(period(&mut t, 257, 6 << 20), None);
    assert_eq!(period(&mut t, 1000, 8 << 20), Some(20));
}

#[test]
fn without_the_capability_nothing_happens() {
    let p = params();
    let mut t = Trigger::default();
    for i in 1..10 {
        t.dirtied(100_000);
        assert_eq!(t.period_end(false, (0, &p), i), None);
    }
}

#[test]
fn tailslow_steps_towards_the_ideal_share() {
    let mut p = params();
    p.cpu_throttle_tailslow = true;
    // At 50 %, dirtying 4x the threshold: the ideal share is 12 %, the
    // step is capped by the increment.
    assert_eq!(next_percentage(50, &p, 400, 100), 60);
    // Dirtying just over the threshold: a small step.
    assert_eq!(next_percentage(50, &p, 110, 100), 55);
    p.cpu_throttle_tailslow = false;
    assert_eq!(next_percentage(50, &p, 110, 100), 60);
    assert_eq!(next_percentage(95, &p, 110, 100), 99);
}
