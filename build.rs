//! Build script: embeds the git revision that `silo --version` prints (and that the image
//! build records as the OCI label `org.opencontainers.image.revision`).
//!
//! The revision is, in order:
//! 1. `SILO_GIT_REVISION` when set (the image build passes it: `scripts/build-image`, the
//!    `Containerfile`'s `REVISION` build argument);
//! 2. in profiles that inherit `release` (release, bench, image), `git rev-parse HEAD` of the
//!    repository this crate is the top of, re-read whenever HEAD moves;
//! 3. `unknown` (a source tarball, no git, or a debug build).
//!
//! Debug builds do not ask git on purpose: a new revision after every commit would rebuild the
//! library and every test binary of the package, for a version string nobody reads in tests.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=SILO_GIT_REVISION");
    let from_env = std::env::var("SILO_GIT_REVISION")
        .ok()
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    let release_like = std::env::var("PROFILE").as_deref() == Ok("release");
    let revision = from_env
        .or_else(|| release_like.then(git_revision).flatten())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo::rustc-env=SILO_GIT_REVISION={revision}");
    // Issue #11: the test doubles (in-memory cluster, stores, clocks, the KMS emulator kit) are
    // compiled only with the `test-support` feature. A binary built with it says so in its
    // version, and `scripts/build-image` checks the image's version is exactly
    // `silo <version> (<revision>)` — so a product image with test doubles fails CI.
    let doubles = if std::env::var_os("CARGO_FEATURE_TEST_SUPPORT").is_some() {
        " +test-support"
    } else {
        ""
    };
    println!("cargo::rustc-env=SILO_BUILD_NOTE={doubles}");
}

/// `git rev-parse HEAD`, only when the crate's directory is the top of a git work tree (not a
/// tarball unpacked inside some other repository); asks cargo to re-run when HEAD moves.
fn git_revision() -> Option<String> {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let top = git(&dir, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    // HEAD, the branch it points to and packed-refs (where a branch may live instead).
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(git(&dir, &["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&dir, &["rev-parse", "--git-path", &name]) {
            let path = dir.join(path);
            // A missing file would make cargo re-run the script on every build.
            if path.exists() {
                println!("cargo::rerun-if-changed={}", path.display());
            }
        }
    }
    git(&dir, &["rev-parse", "HEAD"])
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}
