//! `pyreload new`: drafts an update spec from two source trees.
//!
//! The comparison reads Python source with Python's own `ast`, in an
//! interpreter this process starts for itself (no program is involved). It
//! finds the changed and new modules, orders them so each comes after the
//! changed modules it imports from, and notes what needs a decision:
//! classes whose instance layout changed (a `[[transform]]`), and tables
//! built at import whose definition changed (`reset` or not).

use std::ffi::CString;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use pyo3::prelude::*;
use pyo3::types::PyDict;

const SOURCE: &str = include_str!("draft.py");

/// One changed or new module, as the comparison found it.
pub struct ChangedModule {
    pub module: String,
    pub path: PathBuf,
    pub new: bool,
    /// "changed f", "added C.m", ...
    pub functions: Vec<String>,
    /// (class, what changed in its layout)
    pub layouts: Vec<(String, String)>,
    /// Tables built at import whose definition changed.
    pub tables: Vec<String>,
}

/// The difference between two trees.
pub struct Draft {
    pub modules: Vec<ChangedModule>,
    pub removed: Vec<String>,
}

/// Compares the Python modules under `old` and `new`.
pub fn compare(old: &Path, new: &Path) -> Result<Draft> {
    for dir in [old, new] {
        anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    }
    Python::initialize();
    Python::attach(|py| -> PyResult<Draft> {
        let ns = PyDict::new(py);
        ns.set_item("__builtins__", py.import("builtins")?)?;
        py.run(&CString::new(SOURCE).expect("no NUL bytes"), Some(&ns), None)?;
        let compare = ns.get_item("compare")?.expect("draft.py defines compare");
        type Found = (String, String, bool, Vec<String>, Vec<(String, String)>, Vec<String>);
        let (modules, removed): (Vec<Found>, Vec<String>) = compare.call1((old, new))?.extract()?;
        Ok(Draft {
            modules: modules
                .into_iter()
                .map(|(module, path, new, functions, layouts, tables)| ChangedModule {
                    module,
                    path: PathBuf::from(path),
                    new,
                    functions,
                    layouts,
                    tables,
                })
                .collect(),
            removed,
        })
    })
    .map_err(|e| Python::attach(|py| anyhow::anyhow!("comparing the trees failed: {}", e.value(py))))
    .with_context(|| format!("comparing {} with {}", old.display(), new.display()))
}

/// The draft spec, with `source` paths relative to `spec_dir` (where the
/// spec will be saved), and a TODO at every decision.
pub fn render(draft: &Draft, old: &Path, new: &Path, spec_dir: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Draft update spec, written by `pyreload new --from {} --to {}`.",
        old.display(),
        new.display()
    );
    let _ = writeln!(
        out,
        "# Decide every TODO, then validate it against the running program:"
    );
    let _ = writeln!(out, "#   pyreload check <this file>\n");
    out.push_str("[update]\nname = \"TODO: name this update\"\n");
    out.push_str("# program = \"TODO: the program's name, so no other program is updated\"\n");
    out.push_str("from = \"TODO: the version the program runs now\"\n");
    out.push_str("to = \"TODO: the version this update brings\"\n");
    if draft.modules.is_empty() {
        out.push_str("\n# No module changed between the two trees.\n");
    } else {
        out.push_str("\n# Modules that changed, each after the changed modules it imports from.\n");
    }
    for m in &draft.modules {
        let _ = writeln!(out, "\n[[reload]]\nmodule = \"{}\"", m.module);
        let _ = writeln!(out, "source = \"{}\"", relative(&m.path, spec_dir).display());
        if m.new {
            out.push_str("new = true  # not in the old tree: added to the program by the update\n");
        }
        if !m.functions.is_empty() {
            let _ = writeln!(out, "# functions: {}", m.functions.join(", "));
        }
        for table in &m.tables {
            let _ = writeln!(
                out,
                "# TODO: {table} is built at import and its definition changed. If it is code (a table of\n\
                 #       functions), take the new one: uncomment the next line. If it is data, leave it.\n\
                 # reset = [\"{table}\"]"
            );
        }
    }
    out.push_str("\n[safe_point]\n");
    out.push_str("# Every function this update changes must be inactive when it commits.\n");
    out.push_str("# TODO: add `inactive`, `condition` or `update_point` if the program needs more.\n");
    out.push_str("timeout_ms = 5000\n");
    for m in &draft.modules {
        for (class, what) in &m.layouts {
            let _ = writeln!(
                out,
                "\n# TODO: class {module}.{class} changed its instance layout ({what}).\n\
                 # Its live instances need converting: fill in and uncomment.\n\
                 # [[transform]]\n\
                 # class = \"{module}.{class}\"\n\
                 # defaults = {{ }}          # new attributes, if a default value will do\n\
                 # function = \"TODO: package.module.function\"\n\
                 # reverse = \"TODO: package.module.function, so the update can be rolled back\"",
                module = m.module
            );
        }
    }
    if !draft.removed.is_empty() {
        let _ = writeln!(
            out,
            "\n# Not in the new tree: {}. pyreload does not unload modules; they stay loaded.",
            draft.removed.join(", ")
        );
    }
    out
}

/// `path` relative to `dir`, both made absolute first.
fn relative(path: &Path, dir: &Path) -> PathBuf {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (path, dir) = (normalize(&abs(path)), normalize(&abs(dir)));
    let common = path
        .components()
        .zip(dir.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in dir.components().skip(common) {
        out.push("..");
    }
    for c in path.components().skip(common) {
        out.push(c);
    }
    out
}

/// Removes `.` and resolves `..` lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_out_of_the_spec_directory() {
        assert_eq!(
            relative(Path::new("/a/b/c.py"), Path::new("/a/specs")),
            PathBuf::from("../b/c.py")
        );
        assert_eq!(
            relative(Path::new("/a/./b/c.py"), Path::new("/a")),
            PathBuf::from("b/c.py")
        );
    }
}
