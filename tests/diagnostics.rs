//! Diagnostics for malformed specs, snapshot-tested.
//!
//! Each file in `tests/fixtures/malformed/` is wrong in one way. `pyreload
//! check` refuses it with exit status 2 before contacting any program, and
//! what it prints on stderr (what is wrong, where, the line, and a `help:`
//! saying how to fix it) is compared with the snapshot in `tests/snapshots/`. To accept a
//! change in wording: `INSTA_UPDATE=always cargo test --test diagnostics`,
//! then review the diff of the snapshots.

mod common;

use common::{repo, Sandbox};

#[test]
fn every_malformed_spec_gets_a_located_diagnostic_with_a_fix() {
    let sandbox = Sandbox::new();
    let mut count = 0;
    insta::glob!("fixtures/malformed/*.toml", |path| {
        count += 1;
        let relative = path.strip_prefix(repo()).unwrap();
        let out = sandbox
            .pyreload()
            .args(["check", "--socket", "/nonexistent.sock"])
            .arg(relative)
            .current_dir(repo())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: a malformed spec is a usage error",
            relative.display()
        );
        let stderr = String::from_utf8_lossy(&out.stderr).replace(&repo().display().to_string(), "<repo>");
        assert!(
            stderr.contains(&format!("<repo>/{}:", relative.display())),
            "{}: no file:line:col in\n{stderr}",
            relative.display()
        );
        let help = stderr
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("help: "))
            .unwrap_or_default();
        assert!(
            help.len() > 10,
            "{}: no `help:` saying how to fix it in\n{stderr}",
            relative.display()
        );
        insta::assert_snapshot!(stderr);
    });
    assert!(count >= 30, "only {count} malformed specs");
}
