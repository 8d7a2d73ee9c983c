//! Finding the real parts a test needs (programs, built binaries), with one policy:
//! under `CI=true` a missing part fails the test; elsewhere the test is skipped with a
//! loud message naming what is missing and how to get it.

use std::path::{Path, PathBuf};

/// True when running in CI (`CI=true` or `CI=1`): missing parts are failures there.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate lives one level below the workspace root")
        .to_path_buf()
}

/// Looks `name` up on `PATH` (and in `extra_dirs` first).
pub fn find_program(name: &str, extra_dirs: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    extra_dirs
        .iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A binary of this workspace, built by `cargo build --workspace --bins` into the same
/// target folder as the running test (`target/<profile>/deps/<test>` -> `target/<profile>/NAME`).
pub fn workspace_bin(name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(format!("RT_BIN_{}", name.to_uppercase().replace('-', "_"))) {
        // An override naming a missing file is a missing part too, under the same policy.
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let p = profile_dir.join(name);
    p.is_file().then_some(p)
}

/// Applies the policy to a lookup: returns the part, or `None` after printing why the test is
/// skipped. Panics (fails the test) under `CI=true`.
pub fn require<T>(what: &str, how_to_get: &str, found: Option<T>) -> Option<T> {
    match found {
        Some(v) => Some(v),
        None if in_ci() => panic!("CI=true and {what} is missing: {how_to_get}"),
        None => {
            // Written to the stderr handle, not with `eprintln!`: the test harness captures the
            // macros' output of passing tests, and a skip must never be silent.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: {what} is missing ({how_to_get}). Under CI=true this fails. ***\n"
            );
            None
        }
    }
}

/// Skips (returns from) the calling test when `require` says the part is missing.
#[macro_export]
macro_rules! require_or_skip {
    ($what:expr, $how:expr, $found:expr) => {
        match $crate::require::require($what, $how, $found) {
            Some(v) => v,
            None => return,
        }
    };
}
