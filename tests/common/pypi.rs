//! Pinned packages from PyPI for the tests that run real servers: one
//! virtualenv per CPython minor version, made once and kept under target/.
//!
//! The pins are the ones `docs/design/process-trees-survey.md` §8 checked
//! (gunicorn 27.0.1, flask 3.1.3 and its dependencies, uvicorn 0.54.0 and
//! h11). They are installed with `--no-deps`, so the venv holds exactly this
//! list and nothing a resolver chose on the day.
//!
//! Two steps, each safe against tests racing in parallel (an exclusive
//! `flock` on `target/test-pypi/.web.lock`) and against a run killed half
//! way:
//!
//! 1. **wheels**: `pip download` into a temporary directory, renamed into
//!    `target/test-pypi/web-cpXY` when complete (as `wheels()` in
//!    tests/in_place.rs does). The only step that needs the network.
//!    markupsafe's wheel is per CPython version, hence one directory each.
//! 2. **venv**: `target/web-venv-X.Y`, made with [`super::make_venv`] (the
//!    build interpreter, so the venv matches what pyreload embeds) and
//!    installed offline from those wheels. A venv cannot be renamed into
//!    place: pip writes its absolute path into console-script shebangs and
//!    `RECORD`. So it is built where it stays, and a stamp file written last
//!    (the build interpreter and the pins) says it is complete; a venv
//!    without a matching stamp is a leftover and is made again.

use super::{make_venv, repo, stderr, BUILD_PYTHON};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Every package of the web venv, pinned. uvicorn needs typing-extensions
/// only below CPython 3.11 (see [`web_pins`]).
pub const WEB_PINS: &[&str] = &[
    "gunicorn==27.0.1",
    "flask==3.1.3",
    "werkzeug==3.1.9",
    "jinja2==3.1.6",
    "markupsafe==3.0.4",
    "itsdangerous==2.2.0",
    "click==8.5.1",
    "blinker==1.9.0",
    "uvicorn==0.54.0",
    "h11==0.16.0",
];

/// uvicorn 0.54.0's `typing-extensions>=4.0; python_version < '3.11'`.
pub const TYPING_EXTENSIONS_PIN: &str = "typing-extensions==4.16.0";

/// The build interpreter's `X.Y`.
pub fn build_minor() -> &'static str {
    static MINOR: OnceLock<String> = OnceLock::new();
    MINOR.get_or_init(|| {
        let out = Command::new(BUILD_PYTHON)
            .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{BUILD_PYTHON}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// The pins for the build interpreter's version.
pub fn web_pins() -> Vec<&'static str> {
    let mut pins = WEB_PINS.to_vec();
    let minor: u32 = build_minor().split('.').nth(1).unwrap().parse().unwrap();
    if minor < 11 {
        pins.push(TYPING_EXTENSIONS_PIN);
    }
    pins
}

/// A virtualenv with the pinned web stack, for the build interpreter:
/// `target/web-venv-X.Y`. Made on first use (needs PyPI once), then reused
/// by every test and every run.
pub fn web_venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(make_web_venv).clone()
}

/// The `python` of a venv.
pub fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin/python")
}

fn make_web_venv() -> PathBuf {
    let cache = repo().join("target/test-pypi");
    std::fs::create_dir_all(&cache).unwrap();
    let lock = std::fs::File::create(cache.join(".web.lock")).unwrap();
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("could not lock {}: {e}", cache.display()));

    let pins = web_pins();
    let venv = repo().join("target").join(format!("web-venv-{}", build_minor()));
    let stamp_path = venv.join(".pyreload-web-pins");
    let stamp = format!("{BUILD_PYTHON}\n{}\n", pins.join("\n"));
    if std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        return venv;
    }

    let wheels = web_wheels(&cache, &pins);
    if venv.exists() {
        std::fs::remove_dir_all(&venv).unwrap();
    }
    make_venv(&venv);
    let out = Command::new(BUILD_PYTHON)
        .args(["-m", "pip", "--disable-pip-version-check", "--python"])
        .arg(venv_python(&venv))
        .args(["install", "--quiet", "--no-index", "--no-deps", "--find-links"])
        .arg(&wheels)
        .args(&pins)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pip install of the pinned web stack into {} failed:\n{}",
        venv.display(),
        stderr(&out)
    );
    // The pins must import together (a wrong pin shows here, not as a
    // server that never says it is listening).
    let out = Command::new(venv_python(&venv))
        .args(["-c", "import flask, gunicorn, uvicorn, markupsafe._speedups"])
        .output()
        .unwrap();
    assert!(out.status.success(), "the web venv does not import: {}", stderr(&out));
    std::fs::write(&stamp_path, stamp).unwrap();
    venv
}

/// The wheels of `pins` for the build interpreter, downloaded once into
/// `cache/web-cpXY`.
fn web_wheels(cache: &Path, pins: &[&str]) -> PathBuf {
    // The build interpreter's own pip picks the wheels for its version
    // (markupsafe is cp310 ... cp313).
    let dir = cache.join(format!("web-cp{}", build_minor().replace('.', "")));
    download_wheels(&dir, BUILD_PYTHON, pins)
}

/// Downloads the wheels of `pins` for `python` into `dir` once (the only
/// step of a test venv that needs the network); a download cut short
/// leaves a temporary directory beside it, never a partial `dir`.
pub fn download_wheels(dir: &Path, python: &str, pins: &[&str]) -> PathBuf {
    let complete = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().count() >= pins.len())
            .unwrap_or(false)
    };
    if complete(dir) {
        return dir.to_path_buf();
    }
    let cache = dir.parent().expect("a cache directory");
    let partial = tempfile::Builder::new().prefix(".download-").tempdir_in(cache).unwrap();
    let out = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
        ])
        .arg(partial.path())
        .args(pins)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "could not download {pins:?} from PyPI (needed once, then cached in {}):\n{}",
        dir.display(),
        stderr(&out)
    );
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
    std::fs::rename(partial.keep(), dir).unwrap();
    dir.to_path_buf()
}
