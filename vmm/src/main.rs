//! `migtest-vmm`: a QEMU-shaped VMM for live-migration tests.

fn main() -> std::process::ExitCode {
    migtest_vmm::run_main(std::env::args().skip(1))
}
