//! The channel transports: `file:PATH[,offset=N]` (the stream written to a
//! file, then loaded from it) and `fd:NAME` (a socket passed to each VMM
//! with `getfd` over SCM_RIGHTS, as a management layer does).

use super::*;
use crate::qmp_client::QmpError;
use crate::vm::Vm;
use serde_json::Value;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// `getfd {fdname}` with `fd` passed over the VM's QMP socket.
fn getfd(vm: &Vm, name: &str, fd: &impl AsRawFd) -> Result<()> {
    vm.qmp()
        .execute_with_fd("getfd", json!({ "fdname": name }), fd.as_raw_fd())
        .with_context(|| format!("{} VMM: getfd '{name}'", vm.role()))?;
    Ok(())
}

/// The `desc` of the QMP error `name` must fail with.
fn qmp_error(vm: &Vm, name: &str, args: Value) -> Result<String> {
    match vm.qmp().execute(name, args) {
        Ok(v) => bail!(
            "{} VMM: '{name}' returned {v}; expected an error",
            vm.role()
        ),
        Err(QmpError::Qmp(e)) => Ok(e.desc),
        Err(e) => Err(e).with_context(|| format!("{} VMM: '{name}'", vm.role())),
    }
}

/// Checks that `name` fails with exactly `expected`.
pub(super) fn expect_error(vm: &Vm, name: &str, args: Value, expected: &str) -> Result<()> {
    let got = qmp_error(vm, name, args)?;
    ensure!(
        got == expected,
        "{} VMM: '{name}' failed with {got:?}; QEMU says {expected:?}",
        vm.role()
    );
    Ok(())
}

/// `mission/file`: migrate to `file:PATH,offset=4096` (the source ends
/// `completed`), a destination fails on a truncated copy with a precise
/// error, another loads the whole file and runs on.
fn mission_file(cfg: &CatalogConfig, ctx: &mut Ctx) -> Result<()> {
    let mut pair = ctx.launch(cfg.spec())?;
    wait_first_pass(ctx, &pair)?;
    ctx.step("migrate to a file");
    let path = pair.src.log_dir().join("migration.bin");
    let uri = format!("file:{},offset=4096", path.display());
    match pair.src.qmp().execute("migrate", json!({ "uri": uri })) {
        Ok(_) => {}
        Err(QmpError::Qmp(e)) if cfg.backend.is_qemu() => {
            return ctx.skip(format!(
                "this QEMU has no file: migration (it arrived in QEMU 8.2): \
                 'migrate' says \"{}\"",
                e.desc
            ));
        }
        Err(e) => return Err(e).context("migrate to a file"),
    }
    let info = pair.wait_src_status(MigrationStatus::Completed, STATUS_TIMEOUT)?;
    let figures = pair.final_figures(info)?;
    let len = std::fs::metadata(&path)
        .with_context(|| format!("the migration file {}", path.display()))?
        .len();
    ensure!(
        len > 4096 + figures.transferred / 2,
        "the file holds {len} bytes for {} transferred",
        figures.transferred
    );
    if !cfg.dst_backend.is_qemu() {
        truncated_file_fails(ctx, &mut pair, &path, len)?;
    }
    ctx.step("a destination loads the file");
    pair.restart_destination_deferred()?;
    pair.dst()?.migrate_incoming(&uri)?;
    pair.wait_dst_status(MigrationStatus::Completed, STATUS_TIMEOUT)?;
    ctx.record(&pair, figures);
    ctx.memory_equal(&pair)?;
    ctx.step("destination runs on");
    pair.assert_destination_runs()
}

/// A destination given the first half of the stream ends `failed` with the
/// record that was cut short in `error-desc`; the source stays as it was.
fn truncated_file_fails(
    ctx: &mut Ctx,
    pair: &mut Pair,
    path: &std::path::Path,
    len: u64,
) -> Result<()> {
    ctx.step("a destination fails on a truncated file");
    let short = path.with_file_name("migration-truncated.bin");
    let data = std::fs::read(path).context("reading the migration file")?;
    std::fs::write(&short, &data[..(len / 2) as usize]).context("writing the truncated copy")?;
    pair.restart_destination_deferred()?;
    let dst = pair.dst()?;
    dst.execute(
        "migrate-incoming",
        json!({ "uri": format!("file:{},offset=4096", short.display()), "exit-on-error": false }),
    )?;
    let info = pair.wait_dst_status(MigrationStatus::Failed, STATUS_TIMEOUT)?;
    let desc = info.error_desc.unwrap_or_default();
    ensure!(
        desc.contains("unexpected end of stream"),
        "destination error-desc {desc:?} does not name the truncation"
    );
    ctx.note(format!(
        "truncated file: destination failed with \"{desc}\""
    ));
    ensure!(
        pair.src.query_status()?.status == migtest_qmp::schema::RunState::Postmigrate,
        "source left postmigrate while a destination failed"
    );
    Ok(())
}

/// `mission/fd`: QEMU's fd errors, then the mission flow over a socket pair
/// whose ends were passed to the VMMs with `getfd`.
fn mission_fd(cfg: &CatalogConfig, ctx: &mut Ctx) -> Result<()> {
    let mut pair = ctx.launch(cfg.spec())?;
    ctx.step("fd errors: getfd without a descriptor, unknown names");
    let src = &pair.src;
    let missing = "File descriptor named 'nosuch' not found";
    expect_error(src, "closefd", json!({"fdname": "nosuch"}), missing)?;
    let none = "No file descriptor supplied via SCM_RIGHTS";
    expect_error(src, "getfd", json!({"fdname": "mig"}), none)?;
    let unknown = "File descriptor named 'nosuch' has not been found";
    expect_error(src, "migrate", json!({"uri": "fd:nosuch"}), unknown)?;
    pair.wait_src_status(MigrationStatus::Failed, STATUS_TIMEOUT)?;
    ctx.step("getfd and closefd a descriptor");
    let (spare, _peer) = UnixStream::pair().context("socketpair")?;
    getfd(&pair.src, "spare", &spare)?;
    pair.src.execute("closefd", json!({"fdname": "spare"}))?;
    ctx.step("pass the ends of a socket pair to the destination and the source");
    let (a, b) = UnixStream::pair().context("socketpair")?;
    pair.restart_destination_deferred()?;
    getfd(pair.dst()?, "mig", &b)?;
    pair.dst()?.migrate_incoming("fd:mig")?;
    getfd(&pair.src, "mig", &a)?;
    // The VMMs hold their own descriptors now.
    drop((a, b));
    wait_first_pass(ctx, &pair)?;
    ctx.step("hold switchover");
    ctx.outcome.hold = Some(pair.hold_switchover()?);
    ctx.step("migrate fd:mig");
    pair.src.migrate("fd:mig")?;
    wait_passes(ctx, &mut pair, cfg.passes)?;
    ctx.step("release switchover and wait for completion");
    pair.release_switchover()?;
    let figures = pair.wait_completed()?;
    ctx.record(&pair, figures);
    ctx.memory_equal(&pair)?;
    ctx.step("destination runs on");
    pair.assert_destination_runs()
}

pub(super) fn add(v: &mut Vec<Scenario>) {
    v.push(Scenario::new(
        "mission/file",
        "migrate to file:PATH,offset=4096 (source completed), a truncated copy fails \
         the destination with a precise error, the whole file loads, memory equal, runs on",
        mission_file,
    ));
    v.push(Scenario::new(
        "mission/fd",
        "QEMU's getfd/closefd/fd: errors, then the mission flow over a socket pair passed \
         to both VMMs with getfd (SCM_RIGHTS)",
        mission_fd,
    ));
}
