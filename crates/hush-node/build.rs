//! Records the git commit the node is built from, for `hush_build_info` and
//! the first log line: `HUSH_GIT_SHA` from the environment if set (an image
//! build without `.git` can pass it), else `git rev-parse`, else "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=HUSH_GIT_SHA");
    let sha = std::env::var("HUSH_GIT_SHA")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves (a commit, a checkout).
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                println!("cargo:rerun-if-changed={dir}/HEAD");
            }
            if let Some(reference) = git(&["rev-parse", "--symbolic-full-name", "HEAD"]) {
                if let Some(common) =
                    git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
                {
                    // Only files that exist: a missing one reruns every build.
                    for file in [
                        format!("{common}/{reference}"),
                        format!("{common}/packed-refs"),
                    ] {
                        if std::path::Path::new(&file).exists() {
                            println!("cargo:rerun-if-changed={file}");
                        }
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=HUSH_GIT_SHA={sha}");
}
