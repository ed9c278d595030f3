//! The only place that starts and stops the interpreter through raw ffi.
//!
//! `pyreload run` must behave like `python3 script.py args…`. The most
//! faithful way to get that is to let CPython do what its own `main()` does:
//! build a `PyConfig` from an argv that looks like `python script.py args…`,
//! initialise from it, and hand control to `Py_RunMain`. That gives us
//! `sys.argv`, `sys.path[0]`, `-m` handling, `PYTHON*` variables, signal
//! handlers, `SystemExit` and exit codes exactly as the interpreter defines them.

use std::ffi::{CString, OsString};
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;

use pyo3::ffi;

/// What the interpreter is asked to run, as `python` would spell it.
#[derive(Debug, Clone)]
pub enum Target {
    /// `python path/to/script.py`
    Script(OsString),
    /// `python -m package.module`
    Module(String),
}

/// A fully described interpreter start: which `python` to impersonate and
/// the argv it would have been given.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Absolute path of the `python` executable whose `sys.prefix`,
    /// `sys.path` and site-packages the embedded interpreter must reproduce.
    pub program_name: OsString,
    pub command: Command,
}

/// The command line CPython parses.
#[derive(Debug, Clone)]
pub enum Command {
    /// `pyreload run`'s: `python TARGET ARGS...`, built from what pyreload
    /// parsed.
    Run { target: Target, args: Vec<OsString> },
    /// A whole argv, `argv[0]` included, exactly as this process was given
    /// it: a process started as python through the tree's stand-in
    /// (`host::shim`), whose flags and `-c` CPython must read itself.
    Verbatim(Vec<OsString>),
}

impl Invocation {
    /// The argv CPython would have seen if the user had typed the command
    /// themselves.
    fn argv(&self) -> Vec<CString> {
        let (target, args) = match &self.command {
            Command::Run { target, args } => (target, args),
            Command::Verbatim(argv) => return argv.iter().map(c_string).collect(),
        };
        let mut argv = vec![self.program_name.clone()];
        match target {
            Target::Script(path) => {
                // A script whose name starts with '-' would be read as an
                // option by CPython's parser; `python ./-x.py` is what a user
                // would type instead.
                if path.as_bytes().starts_with(b"-") {
                    let mut p = OsString::from("./");
                    p.push(path);
                    argv.push(p);
                } else {
                    argv.push(path.clone());
                }
            }
            Target::Module(name) => {
                argv.push("-m".into());
                argv.push(name.into());
            }
        }
        argv.extend(args.iter().cloned());
        argv.iter().map(c_string).collect()
    }
}

fn c_string(arg: &OsString) -> CString {
    CString::new(arg.as_bytes()).expect("argv from the OS has no NUL bytes")
}

/// Initialises the interpreter from `invocation`. On return the calling
/// thread is the interpreter's main thread and holds the GIL.
///
/// A configuration error (for example an unreadable `pyvenv.cfg`) is reported
/// by CPython itself and ends the process with its exit status, as `python`
/// would.
pub fn initialize(invocation: &Invocation) {
    let program_name =
        CString::new(invocation.program_name.as_bytes()).expect("program name from the OS has no NUL bytes");
    let argv = invocation.argv();
    let mut argv_ptrs: Vec<*const std::os::raw::c_char> = argv.iter().map(|a| a.as_ptr()).collect();

    // SAFETY: `PyConfig_InitPythonConfig` fully initialises the struct it is
    // given, so `assume_init` afterwards is sound. Every string passed in is a
    // NUL-terminated buffer that outlives the call that copies it (CPython
    // copies them into its own wide strings). The config is cleared exactly
    // once, after `Py_InitializeFromConfig` has copied what it needs.
    // `Py_ExitStatusException` does not return.
    unsafe {
        let mut config = MaybeUninit::<ffi::PyConfig>::uninit();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let mut config = config.assume_init();

        let status = ffi::PyConfig_SetBytesString(&mut config, &mut config.program_name, program_name.as_ptr());
        exit_on_error(&mut config, status);

        // Let CPython parse the argv exactly as its own `main()` does.
        config.parse_argv = 1;
        let status =
            ffi::PyConfig_SetBytesArgv(&mut config, argv_ptrs.len() as ffi::Py_ssize_t, argv_ptrs.as_mut_ptr());
        exit_on_error(&mut config, status);

        let status = ffi::Py_InitializeFromConfig(&config);
        exit_on_error(&mut config, status);
        ffi::PyConfig_Clear(&mut config);
    }
}

/// # Safety
/// `config` must have been initialised by `PyConfig_InitPythonConfig`.
unsafe fn exit_on_error(config: &mut ffi::PyConfig, status: ffi::PyStatus) {
    if ffi::PyStatus_Exception(status) != 0 {
        ffi::PyConfig_Clear(config);
        ffi::Py_ExitStatusException(status);
    }
}

/// Runs `__main__` the way `python` does, then finalises the interpreter.
/// Returns the process exit status that `python` would have returned.
///
/// Must be called on the thread that called [`initialize`], with the GIL held.
pub fn run_main() -> i32 {
    // SAFETY: the interpreter was initialised by `initialize` on this thread;
    // `Py_RunMain` consumes that state and finalises it before returning.
    unsafe { ffi::Py_RunMain() }
}
