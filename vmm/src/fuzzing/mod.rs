//! What must hold for every input of the `cargo fuzz` targets in `fuzz/`.
//!
//! Each check takes the raw input and panics when an invariant is broken;
//! anything else (an error the input deserves) returns normally. The fuzz
//! targets call these functions and so do the stable regression tests
//! (`vmm/tests/fuzz_regressions.rs`), which replay every file under
//! `fixtures/fuzz-regressions/<target>/`: one definition of each check.
//! See `docs/reliability.md`.

pub mod image;
pub mod multifd;
pub mod qmp;
pub mod stream;

pub use image::check_guest_image;
pub use multifd::check_multifd_channel;
pub use qmp::check_qmp_server_input;
pub use stream::check_stream;
