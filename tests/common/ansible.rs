//! Real Ansible for the many-hosts tests: `ansible-core` from PyPI,
//! pinned, in a virtualenv made once and kept under target/, as
//! [`super::pypi`] does for the web stack.
//!
//! ansible-core 2.19 is the newest line whose controller runs on CPython
//! 3.11 (2.20 needs 3.12). The venv uses the build interpreter when it is
//! 3.11 or later, else the first `python3.1[1-3]` on PATH; Ansible is a
//! separate program here, so its interpreter need not be pyreload's.
//!
//! The same two steps as the web venv, under an exclusive `flock` on
//! `target/test-pypi/.ansible.lock`: wheels downloaded once (the only step
//! that needs the network) into `target/test-pypi/ansible-cpXY`, then
//! `target/ansible-venv-X.Y` installed offline from them, a stamp file
//! written last.

use super::{make_venv_with, repo, stderr, BUILD_PYTHON};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// ansible-core and every package it needs, pinned (`--no-deps`).
pub const ANSIBLE_PINS: &[&str] = &[
    "ansible-core==2.19.14",
    "jinja2==3.1.6",
    "markupsafe==3.0.4",
    "pyyaml==6.0.4",
    "cryptography==50.0.2",
    "cffi==2.1.1",
    "pycparser==3.12",
    "packaging==26.4",
    "resolvelib==1.2.1",
];

/// The interpreter Ansible runs on, and its `X.Y`.
fn ansible_python() -> (String, String) {
    let minor_of = |python: &str| -> Option<(u32, String)> {
        let out = Command::new(python)
            .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
        let minor = text.split('.').nth(1)?.parse().ok()?;
        out.status.success().then_some((minor, text))
    };
    for python in [BUILD_PYTHON, "python3.11", "python3.12", "python3.13"] {
        if let Some((minor, version)) = minor_of(python) {
            if minor >= 11 {
                return (python.to_string(), version);
            }
        }
    }
    panic!("ansible-core 2.19 needs CPython 3.11 or later for its controller; none found (tried {BUILD_PYTHON} and python3.11 to 3.13 on PATH)");
}

/// The venv's `bin/` directory: `ansible-playbook` is there.
pub fn ansible_bin() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(make_ansible_venv).join("bin")
}

fn make_ansible_venv() -> PathBuf {
    let cache = repo().join("target/test-pypi");
    std::fs::create_dir_all(&cache).unwrap();
    let lock = std::fs::File::create(cache.join(".ansible.lock")).unwrap();
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("could not lock {}: {e}", cache.display()));
    let (python, version) = ansible_python();
    let venv = repo().join("target").join(format!("ansible-venv-{version}"));
    let stamp_path = venv.join(".pyreload-ansible-pins");
    let stamp = format!("{python}\n{}\n", ANSIBLE_PINS.join("\n"));
    if std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        return venv;
    }
    let wheels = wheels(&cache, &python, &version);
    if venv.exists() {
        std::fs::remove_dir_all(&venv).unwrap();
    }
    make_venv_with(&python, &venv);
    let out = Command::new(&python)
        .args(["-m", "pip", "--disable-pip-version-check", "--python"])
        .arg(venv.join("bin/python"))
        .args(["install", "--quiet", "--no-index", "--no-deps", "--find-links"])
        .arg(&wheels)
        .args(ANSIBLE_PINS)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pip install of the pinned ansible-core into {} failed:\n{}",
        venv.display(),
        stderr(&out)
    );
    let out = Command::new(venv.join("bin/ansible-playbook"))
        .arg("--version")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    assert!(out.status.success(), "ansible-playbook does not run: {}", stderr(&out));
    std::fs::write(&stamp_path, stamp).unwrap();
    venv
}

/// The pinned wheels for `python`, downloaded once.
fn wheels(cache: &Path, python: &str, version: &str) -> PathBuf {
    let dir = cache.join(format!("ansible-cp{}", version.replace('.', "")));
    super::pypi::download_wheels(&dir, python, ANSIBLE_PINS)
}
