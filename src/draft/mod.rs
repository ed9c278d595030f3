//! `pyreload new`: drafts an update spec from two source trees, or from a
//! running program's modules against their files on disk.
//!
//! The comparison reads Python source with Python's own `ast`, in an
//! interpreter this process starts for itself (the program only says what
//! it runs, see `engine::running`). It finds the changed modules, and the
//! modules new to the program that they import (directly or through other
//! new ones): a module nothing changed imports would never be loaded, so
//! it is left out. It orders them so each comes after the changed modules
//! it imports from, and notes what needs a decision:
//! classes whose instance layout changed (a `[[transform]]`), and tables
//! built at import whose definition changed (`reset` or not).

use std::ffi::CString;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::control::protocol::{FileState, LoadedProgram};

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

/// The difference between two trees, or between a program and its files.
pub struct Draft {
    pub modules: Vec<ChangedModule>,
    /// Gone from the new tree (or from disk).
    pub removed: Vec<String>,
    /// New in the tree, but no changed module imports them.
    pub left_out: Vec<String>,
    /// Loaded modules whose running source is not known: (module, why).
    pub not_compared: Vec<(String, String)>,
}

type Found = (String, String, bool, Vec<String>, Vec<(String, String)>, Vec<String>);

fn call_draft<'py>(py: Python<'py>, function: &str, args: impl pyo3::call::PyCallArgs<'py>) -> PyResult<Draft> {
    let ns = PyDict::new(py);
    ns.set_item("__builtins__", py.import("builtins")?)?;
    py.run(&CString::new(SOURCE).expect("no NUL bytes"), Some(&ns), None)?;
    let compare = ns.get_item(function)?.expect("draft.py defines it");
    let (modules, removed, left_out): (Vec<Found>, Vec<String>, Vec<String>) = compare.call1(args)?.extract()?;
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
        left_out,
        not_compared: Vec::new(),
    })
}

/// Compares each loaded module of a running program with its file.
pub fn compare_running(program: &LoadedProgram) -> Result<Draft> {
    type Loaded<'a> = (&'a str, &'a str, Option<&'a Vec<String>>, Option<&'a str>);
    let mut loaded: Vec<Loaded> = Vec::new();
    let mut not_compared = Vec::new();
    for m in &program.modules {
        let running = match &m.state {
            FileState::Same | FileState::Gone => None,
            FileState::Changed { running } => Some(running.as_str()),
            FileState::Unknown { why } => {
                not_compared.push((m.name.clone(), why.clone()));
                None
            }
            FileState::Frozen => {
                not_compared.push((m.name.clone(), FROZEN.to_string()));
                None
            }
        };
        let path = m.path.as_deref().unwrap_or("");
        loaded.push((&m.name, path, m.search.as_ref(), running));
    }
    Python::initialize();
    let mut draft =
        Python::attach(|py| call_draft(py, "compare_running", (loaded, &program.sys_path))).map_err(|e| {
            Python::attach(|py| anyhow::anyhow!("comparing the program with its files failed: {}", e.value(py)))
        })?;
    draft.removed.extend(
        program
            .modules
            .iter()
            .filter(|m| matches!(m.state, FileState::Gone))
            .map(|m| m.name.clone()),
    );
    draft.not_compared = not_compared;
    Ok(draft)
}

/// Compares the Python modules under `old` and `new`.
pub fn compare(old: &Path, new: &Path) -> Result<Draft> {
    for dir in [old, new] {
        anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    }
    Python::initialize();
    Python::attach(|py| call_draft(py, "compare", (old, new)))
        .map_err(|e| Python::attach(|py| anyhow::anyhow!("comparing the trees failed: {}", e.value(py))))
        .with_context(|| format!("comparing {} with {}", old.display(), new.display()))
}

/// Where a draft's new version comes from.
pub enum Origin<'a> {
    Trees {
        old: &'a Path,
        new: &'a Path,
    },
    /// A running program (name, pid): the new version is each loaded
    /// module's file, so a changed module needs no `source`.
    Running {
        name: &'a str,
        pid: u32,
    },
}

/// The draft spec, with `source` paths relative to `spec_dir` (where the
/// spec will be saved), and a TODO at every decision.
pub fn render(draft: &Draft, origin: &Origin, spec_dir: &Path) -> String {
    let mut out = String::new();
    match origin {
        Origin::Trees { old, new } => {
            let _ = writeln!(
                out,
                "# Draft update spec, written by `pyreload new --from {} --to {}`.",
                old.display(),
                new.display()
            );
        }
        Origin::Running { name, pid } => {
            let _ = writeln!(
                out,
                "# Draft update spec, written by `pyreload new --running` from program {name} (pid {pid}):\n\
                 # each module it has loaded whose file changed since, and the modules new to it that\n\
                 # those import."
            );
        }
    }
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
        out.push_str(match origin {
            Origin::Trees { .. } => "\n# No module changed between the two trees.\n",
            Origin::Running { .. } => "\n# No loaded module's file changed since the program loaded it.\n",
        });
    } else {
        out.push_str("\n# Modules that changed, each after the changed modules it imports from.\n");
    }
    for m in &draft.modules {
        let _ = writeln!(out, "\n[[reload]]\nmodule = \"{}\"", m.module);
        match origin {
            Origin::Running { .. } if !m.new => {
                let _ = writeln!(out, "# source: its file, {}", m.path.display());
            }
            _ => {
                let _ = writeln!(out, "source = \"{}\"", relative(&m.path, spec_dir).display());
            }
        }
        if m.new {
            out.push_str(match origin {
                Origin::Trees { .. } => "new = true  # not in the old tree: added to the program by the update\n",
                Origin::Running { .. } => "new = true  # not loaded yet: added to the program by the update\n",
            });
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
    if !draft.left_out.is_empty() {
        let _ = writeln!(
            out,
            "\n# New in the tree but imported by no changed module, so left out: {}.",
            some(&draft.left_out)
        );
    }
    if !draft.not_compared.is_empty() {
        let (frozen, other): (Vec<_>, Vec<_>) = draft.not_compared.iter().partition(|(_, why)| why == FROZEN);
        let _ = writeln!(
            out,
            "\n# Not compared: the source the program runs is not known for {} loaded module(s):",
            draft.not_compared.len()
        );
        for (module, why) in other.iter().take(LIST) {
            let _ = writeln!(out, "#   {module}: {why}");
        }
        if other.len() > LIST {
            let _ = writeln!(out, "#   and {} more", other.len() - LIST);
        }
        if !frozen.is_empty() {
            let names: Vec<String> = frozen.iter().map(|(m, _)| m.clone()).collect();
            let _ = writeln!(
                out,
                "#   frozen into the interpreter, not run from their files: {}",
                some(&names)
            );
        }
    }
    if !draft.removed.is_empty() {
        let _ = writeln!(
            out,
            "\n# {}: {}. pyreload does not unload modules; they stay loaded.",
            match origin {
                Origin::Trees { .. } => "Not in the new tree",
                Origin::Running { .. } => "Loaded, but their files are gone",
            },
            draft.removed.join(", ")
        );
    }
    out
}

/// Why a frozen module is not compared (as `pyreload diff` says it).
const FROZEN: &str = "it is frozen: the interpreter runs code built into it, not its file";

/// How many names a comment lists before "and N more".
const LIST: usize = 10;

fn some(names: &[String]) -> String {
    let shown = names.iter().take(LIST).cloned().collect::<Vec<_>>().join(", ");
    match names.len().checked_sub(LIST) {
        Some(more) if more > 0 => format!("{shown} and {more} more"),
        _ => shown,
    }
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
