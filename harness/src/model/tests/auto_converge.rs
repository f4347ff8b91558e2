//! auto-converge in the model: the capability's rule, the parameters against migtest-vmm's
//! own validation (many cases), `wait-throttled`, and the throttle invariant.

use super::*;
use crate::model::auto_converge::{set_throttle, Throttle, ERR_INITIAL, ERR_MAX};

fn ac(side: Side, state: bool) -> Op {
    Op::SetAutoConverge { side, state }
}

#[test]
fn capability_is_refused_during_a_migration_only_on_the_source() {
    let mut m = Model::new(pair());
    let (e, _) = run(&mut m, ac(Side::Source, true));
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    assert!(m.capabilities(Side::Source).unwrap().auto_converge);
    run_all(&mut m, &[Op::Hold {}, migrate()]);
    let (e, _) = run(&mut m, ac(Side::Source, false));
    assert_eq!(e.replies(), vec![&ExpectedReply::error(ERR_IN_PROGRESS)]);
    assert!(m.capabilities(Side::Source).unwrap().auto_converge);
    let (e, _) = run(&mut m, set_throttle(Side::Source, Some(50), None, None));
    assert_eq!(
        e.replies(),
        vec![&ExpectedReply::Ok],
        "parameters: any time"
    );
    assert_eq!(m.parameters(Side::Source).unwrap().throttle.initial, 50);
}

#[test]
fn parameter_errors_change_nothing() {
    let mut m = Model::new(pair());
    let (e, _) = run(&mut m, set_throttle(Side::Source, Some(0), None, Some(100)));
    assert_eq!(e.replies(), vec![&ExpectedReply::error(ERR_INITIAL)]);
    let (e, _) = run(&mut m, set_throttle(Side::Source, Some(60), None, Some(50)));
    assert_eq!(e.replies(), vec![&ExpectedReply::error(ERR_MAX)]);
    assert_eq!(
        m.parameters(Side::Source).unwrap().throttle,
        Throttle::default()
    );
}

#[test]
fn wait_throttled_needs_the_capability_and_a_held_dirtying_guest() {
    let mut m = Model::new(pair());
    run_all(&mut m, &[Op::Hold {}, migrate()]);
    let e = m.expect(&Op::WaitThrottled {});
    assert_eq!(
        e.replies(),
        vec![&ExpectedReply::Timeout],
        "no auto-converge"
    );
    let mut m = Model::new(pair());
    run_all(&mut m, &[ac(Side::Source, true), Op::Hold {}, migrate()]);
    let (e, _) = run(&mut m, Op::WaitThrottled {});
    assert_eq!(e.replies(), vec![&ExpectedReply::Ok]);
    let idle = PairSpec {
        image: "idle".into(),
        ..pair()
    };
    let mut m = Model::new(idle);
    run_all(&mut m, &[ac(Side::Source, true), Op::Hold {}, migrate()]);
    assert!(m.expect(&Op::WaitThrottled {}).may_time_out());
    // No migration: the wait gives up at once.
    let m = Model::new(pair());
    assert_eq!(
        m.expect(&Op::WaitThrottled {}).replies(),
        vec![&ExpectedReply::unreachable(S::None)]
    );
}

#[test]
fn a_throttle_after_the_end_or_without_the_capability_is_a_violation() {
    let mut m = Model::new(pair());
    run_all(&mut m, &[ac(Side::Source, true), Op::Hold {}, migrate()]);
    let op = Op::WaitThrottled {};
    m.apply(&op);
    let mut obs = m.canonical_observation(&op);
    obs.source.cpu_throttle = Some(60);
    m.step(&op, &obs).expect("throttled while held");
    run_all(&mut m, &[Op::Release {}, Op::WaitCompleted {}]);
    let op = Op::CheckDestinationRuns {};
    m.apply(&op);
    let mut obs = m.canonical_observation(&op);
    obs.source.cpu_throttle = Some(99);
    let v = m.check(&op, &obs).unwrap_err();
    assert!(
        v.message.contains("after the migration ended 'completed'"),
        "{v}"
    );

    let mut m = Model::new(pair());
    run(&mut m, Op::Hold {});
    let op = migrate();
    m.apply(&op);
    let mut obs = m.canonical_observation(&op);
    obs.source.cpu_throttle = Some(20);
    let v = m.check(&op, &obs).unwrap_err();
    assert!(v.message.contains("without the auto-converge"), "{v}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    /// The model's rule for the throttle parameters agrees with migtest-vmm's validation
    /// (checked against QEMU 7.2) on any request from any valid state.
    #[test]
    fn throttle_rule_agrees_with_the_vmm(
        start in (1u8..=99, 1u8..=99, any::<bool>()).prop_flat_map(|(i, inc, t)| {
            (Just(i), Just(inc), Just(t), i..=99)
        }),
        req in (
            proptest::option::of(any::<u8>()),
            proptest::option::of(any::<u8>()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<u8>()),
        ),
    ) {
        let (i, inc, t, max) = start;
        let model = Throttle { initial: i, increment: inc, tailslow: t, max };
        let op = Op::SetThrottle {
            side: Side::Source,
            cpu_throttle_initial: req.0,
            cpu_throttle_increment: req.1,
            cpu_throttle_tailslow: req.2,
            max_cpu_throttle: req.3,
        };
        let vmm = migtest_vmm::migration::Parameters {
            cpu_throttle_initial: i,
            cpu_throttle_increment: inc,
            cpu_throttle_tailslow: t,
            max_cpu_throttle: max,
            ..Default::default()
        };
        let set = migtest_vmm::migration::SetParameters {
            cpu_throttle_initial: req.0,
            cpu_throttle_increment: req.1,
            cpu_throttle_tailslow: req.2,
            max_cpu_throttle: req.3,
            ..Default::default()
        };
        match (model.set(&op), set.test_apply(&vmm)) {
            (Ok(a), Ok(b)) => prop_assert_eq!(
                (a.initial, a.increment, a.tailslow, a.max),
                (b.cpu_throttle_initial, b.cpu_throttle_increment,
                 b.cpu_throttle_tailslow, b.max_cpu_throttle)
            ),
            (Err(a), Err(b)) => prop_assert_eq!(a, b.desc),
            (a, b) => prop_assert!(false, "model {:?}, vmm {:?}", a, b),
        }
    }
}
