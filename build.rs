//! Links `pyreload` to the libpython of the `python3` it was built with, and
//! records where that interpreter lives.
//!
//! The interpreter is `PYO3_PYTHON` if set, else the active virtualenv's
//! `python`, else `python3` on PATH (pyo3's rules); each needs its own
//! `CARGO_TARGET_DIR` to keep builds for other versions.
//!
//! Without an rpath the loader cache picks Debian's `libpython3.11.so` at run
//! time, and the embedded interpreter then sees Debian's `sys.path` instead of
//! the build interpreter's (see `shared/design.md`, "Facts checked").

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    // Py_3_11, Py_3_12, ... for code that depends on the CPython version.
    pyo3_build_config::use_pyo3_cfgs();
    let config = pyo3_build_config::get();
    let executable = config
        .executable()
        .map(str::to_string)
        .expect("pyo3-build-config found no Python executable; set PYO3_PYTHON");
    println!("cargo:rustc-env=PYRELOAD_BUILD_PYTHON={executable}");
    println!(
        "cargo:rustc-env=PYRELOAD_BUILD_PYTHON_VERSION={}.{}",
        config.version().major,
        config.version().minor
    );
    tests_as_root();
    precompile_support(&executable);
    // Where the rpath points; `pyreload run` checks the libpython it loaded
    // came from there.
    println!(
        "cargo:rustc-env=PYRELOAD_BUILD_LIBDIR={}",
        config.lib_dir().unwrap_or_default()
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    println!("cargo:rerun-if-changed=build.rs");
}

/// Compiles src/engine/support.py with the build interpreter, into
/// `OUT_DIR/support.marshal` (the interpreter's bytecode magic number, then
/// the marshalled code object): compiling its 1,500 lines took 22 ms of the
/// first update in every process. pyreload runs only on the CPython version
/// it was built for, and the engine still compiles the source if the magic
/// number differs or this step failed (an empty file).
fn precompile_support(python: &str) {
    println!("cargo:rerun-if-changed=src/engine/support.py");
    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("support.marshal");
    let script = "import importlib.util, marshal, sys\n\
                  src = open(sys.argv[1], encoding='utf-8').read()\n\
                  code = compile(src, 'pyreload-support', 'exec', dont_inherit=True)\n\
                  sys.stdout.buffer.write(importlib.util.MAGIC_NUMBER + marshal.dumps(code))\n";
    let compiled = std::process::Command::new(python)
        .args(["-c", script, "src/engine/support.py"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| o.stdout)
        .unwrap_or_default();
    std::fs::write(&out, compiled).expect("OUT_DIR is writable");
}

/// Sets `cfg(pyreload_tests_as_root)` when building as root with `setpriv`
/// at hand: the tests that act as another user need both, and are marked
/// `#[ignore = "..."]` without them, so a run shows them as ignored with
/// the reason (libtest cannot ignore a test at run time). `cargo test`
/// builds and runs as the same user; a change of user (and so of `USER`)
/// runs this again.
fn tests_as_root() {
    println!("cargo::rustc-check-cfg=cfg(pyreload_tests_as_root)");
    println!("cargo:rerun-if-env-changed=USER");
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    });
    let setpriv = std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && setpriv {
        println!("cargo:rustc-cfg=pyreload_tests_as_root");
    }
}
