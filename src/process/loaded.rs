//! What source the program loaded: recorded as the interpreter reads each
//! module's code, so `pyreload diff` and `pyreload new --running` can
//! compare what the program runs with what is on disk now, after an
//! in-place change (`git pull`, `pip install -U`, an editor).
//!
//! CPython reads every module's code through one function, `io.open_code`:
//! the source (`.py`) when it compiles it, the cached bytecode (`.pyc`) when
//! that is valid for the source's mtime and size. `PyFile_SetOpenCodeHook`
//! lets an embedder provide that function, once, before the interpreter
//! starts. The hook opens the file exactly as CPython would without it
//! (`_io.open(path, "rb")`) and hands that file to the caller, so import
//! behaves as under `python`: same file object, same audit event, nothing
//! added to `sys.meta_path` or to any module. On the side it keeps:
//!
//! - for a `.py`: the bytes the caller is about to compile, read from the
//!   very file object it gets (then rewound), so a file replaced meanwhile
//!   cannot be mistaken for what was loaded;
//! - for a `.pyc` in `__pycache__`: its source's bytes, when the source's
//!   mtime and size are those the `.pyc` header names (the test CPython
//!   itself makes before using the `.pyc`) and did not move while read.
//!   Otherwise CPython compiles the source, and that read is recorded.
//!
//! What is not read through `open_code` is not recorded, and `running`
//! says so rather than guess: frozen and built-in modules, extension
//! modules, `.pyc` files without source, zip imports, custom loaders.
//! `bench/import_record.py` measures the cost (BENCHMARKS.md).

use std::collections::HashMap;
use std::os::raw::c_void;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::UNIX_EPOCH;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// Source bytes kept in all, at most. Past it, later modules are recorded
/// as not kept (and say so) rather than grow the program without bound.
const BUDGET: usize = 256 << 20;

/// Orders the import records and the sources updates load (see
/// [`crate::host::state`]): the newest says what runs.
static SEQ: AtomicU64 = AtomicU64::new(1);

/// The next number in the order of loads.
pub fn next_seq() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// What was recorded when a source file was loaded.
#[derive(Clone, Debug)]
pub struct Record {
    pub seq: u64,
    /// The source text, or why it is not known.
    pub text: Result<String, String>,
}

#[derive(Default)]
struct Records {
    by_path: HashMap<String, Record>,
    kept: usize,
}

static RECORDS: Mutex<Option<Records>> = Mutex::new(None);

fn records() -> MutexGuard<'static, Option<Records>> {
    RECORDS.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the program loaded from `path`, if the hook saw it load that file.
pub fn lookup(path: &str) -> Option<Record> {
    records().as_ref()?.by_path.get(path).cloned()
}

extern "C" {
    // In CPython's public C API since 3.8 (Include/cpython/fileobject.h);
    // pyo3-ffi does not declare it.
    fn PyFile_SetOpenCodeHook(
        hook: unsafe extern "C" fn(*mut ffi::PyObject, *mut c_void) -> *mut ffi::PyObject,
        user_data: *mut c_void,
    ) -> std::os::raw::c_int;
}

/// Installs the recording hook. Call once, before the interpreter starts.
pub fn install() {
    *records() = Some(Records::default());
    // SAFETY: called before `Py_InitializeFromConfig`, which the C API
    // allows without an interpreter; `open_code` is a plain function that
    // lives as long as the process; it takes no user data.
    let status = unsafe { PyFile_SetOpenCodeHook(open_code, std::ptr::null_mut()) };
    if status != 0 {
        // Only refused once a hook is set: nothing is recorded then, and
        // `running` says so for every module.
        *records() = None;
    }
}

/// The hook: `io.open_code(path)`.
///
/// # Safety
/// CPython calls it with the GIL held and `path` a borrowed `str`.
unsafe extern "C" fn open_code(path: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: CPython holds the GIL for the call (see above); this thread
    // is attached even while the interpreter is still initialising, when
    // `Python::attach` would refuse.
    let py = unsafe { Python::assume_attached() };
    let path = unsafe { Bound::from_borrowed_ptr(py, path) };
    match open_and_record(py, &path) {
        Ok(file) => file.into_ptr(),
        Err(e) => {
            e.restore(py);
            std::ptr::null_mut()
        }
    }
}

static OPEN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn open_and_record<'py>(py: Python<'py>, path: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let open = OPEN.get_or_try_init(py, || py.import("_io")?.getattr("open").map(Bound::unbind))?;
    let file = open.bind(py).call1((path, "rb"))?;
    // Recording never makes an import fail: a file the recorder cannot
    // read is recorded as unknown, or not at all.
    if let Ok(name) = path.extract::<String>() {
        if name.ends_with(".py") {
            let read = file
                .call_method0("read")
                .and_then(|b| b.extract::<Vec<u8>>())
                .and_then(|bytes| file.call_method1("seek", (0,)).map(|_| bytes));
            match read {
                Ok(bytes) => keep(name, Ok(bytes)),
                Err(_) => {
                    // The caller gets a file positioned at 0, as without
                    // the hook; if that fails it fails as it would have.
                    file.call_method1("seek", (0,))?;
                }
            }
        } else if let Some(source) = source_of_pyc(&name) {
            let bytes = py.detach(|| source_matching_pyc(&name, &source));
            keep(source, bytes);
        }
    }
    Ok(file)
}

fn keep(path: String, bytes: Result<Vec<u8>, String>) {
    let mut guard = records();
    let Some(records) = guard.as_mut() else { return };
    let text = bytes.and_then(|bytes| {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if records.kept + text.len() > BUDGET {
            return Err(format!(
                "pyreload keeps at most {} MiB of the program's sources and had used them up when this \
                 module was loaded",
                BUDGET >> 20
            ));
        }
        records.kept += text.len();
        Ok(text)
    });
    if let Some(old) = records.by_path.insert(path, Record { seq: next_seq(), text }) {
        if let Ok(text) = old.text {
            records.kept -= text.len();
        }
    }
}

/// `dir/__pycache__/name.cpython-311.pyc` -> `dir/name.py`.
fn source_of_pyc(pyc: &str) -> Option<String> {
    let pyc = Path::new(pyc);
    if pyc.extension()? != "pyc" {
        return None;
    }
    let cache = pyc.parent()?;
    if cache.file_name()? != "__pycache__" {
        return None;
    }
    let stem = pyc.file_name()?.to_str()?.split('.').next()?;
    Some(cache.parent()?.join(format!("{stem}.py")).to_str()?.to_string())
}

/// The source's bytes, if the `.pyc` was compiled from them: its header
/// names the source's mtime and size as they are now, before and after
/// the read.
fn source_matching_pyc(pyc: &str, source: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut header = [0u8; 16];
    std::fs::File::open(pyc)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|e| format!("its cached bytecode {pyc} could not be read: {e}"))?;
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    if word(4) != 0 {
        return Err(format!(
            "it was loaded from a hash-based .pyc ({pyc}), which pyreload does not check against its source"
        ));
    }
    let stamp = |path: &str| -> Result<(u32, u32), String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("its source {path} could not be read: {e}"))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        Ok((mtime, meta.len() as u32))
    };
    let before = stamp(source)?;
    if before != (word(8), word(12)) {
        // CPython will find the .pyc stale and compile the source, through
        // this hook again; that read is what gets recorded.
        return Err(format!("its cached bytecode {pyc} does not match its source"));
    }
    let bytes = std::fs::read(source).map_err(|e| format!("its source {source} could not be read: {e}"))?;
    if stamp(source)? != before {
        return Err(format!("its source {source} changed while it was being loaded"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pyc_names_its_source_next_to_its_cache_directory() {
        assert_eq!(
            source_of_pyc("/a/b/__pycache__/mod.cpython-311.opt-1.pyc").as_deref(),
            Some("/a/b/mod.py")
        );
        assert_eq!(source_of_pyc("/a/b/mod.pyc"), None);
        assert_eq!(source_of_pyc("/a/b/__pycache__/mod.txt"), None);
    }
}
