//! Copies of a reloaded module's names in other modules.
//!
//! `from m import NAME [as ALIAS]` binds the importer's own global to the
//! object `m.NAME` held at import time, and `from m import *` does so for
//! every public name. The rule (README, "What a reload keeps"):
//!
//! - A copy **follows** the update when the importer's binding is still the
//!   very object `m.NAME` held when the commit began, and the update gives
//!   `m.NAME` another object (a constant's new value, a `reset`, a replaced
//!   function, a transformed global). An importer that rebound the name
//!   itself holds another object, and keeps it.
//! - A star importer also **gains** the public names the update adds to `m`
//!   (`__all__` when `m` defines it), unless it already binds that name.
//! - Names `m` no longer defines stay in importers.
//!
//! Finding the copies reads the importers' sources (support.py,
//! `find_copies`) and runs in prepare, with the program running, so that
//! `pyreload check` shows them. The commit only compares, for each copy
//! found, the importer's binding with the module's value: O(copies), not a
//! walk of every module. Every rebind goes through the journal, so a failed
//! commit and `pyreload rollback` restore the importer's old binding.

use std::collections::{HashMap, HashSet};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use super::journal::Journal;
use super::support::Support;
use crate::diagnostic::Problem;
use crate::plan::{Copy, ModulePlan, Plan, StarImport};

/// Finds, in the program as it runs now, every copy of a name of the
/// modules `modules` reloads.
pub fn find(
    py: Python<'_>,
    support: &Support<'_>,
    modules: &[ModulePlan],
) -> Result<(Vec<Copy>, Vec<StarImport>), Problem> {
    let fail = |e: PyErr| support.problem(py, "could not find the copies of the reloaded modules' names", &e);
    let updated: Vec<(String, Option<Py<PyAny>>)> = modules
        .iter()
        .map(|m| (m.name.clone(), (!m.new).then(|| m.module.clone_ref(py).into_any())))
        .collect();
    let found = support.find_copies(updated).map_err(fail)?;
    let (copies, stars): (Vec<Bound<'_, PyAny>>, Vec<Bound<'_, PyAny>>) = found.extract().map_err(fail)?;
    let mut out_copies = Vec::with_capacity(copies.len());
    for c in copies {
        let (importer, globals, alias_key, module, name_key): (
            String,
            Bound<'_, PyDict>,
            Bound<'_, PyString>,
            usize,
            Bound<'_, PyString>,
        ) = c.extract().map_err(fail)?;
        out_copies.push(Copy {
            importer,
            globals: globals.unbind(),
            alias: alias_key.to_str().map_err(fail)?.to_owned(),
            module,
            name: name_key.to_str().map_err(fail)?.to_owned(),
            alias_key: alias_key.unbind(),
            name_key: name_key.unbind(),
        });
    }
    let mut out_stars = Vec::with_capacity(stars.len());
    for s in stars {
        let (importer, globals, module): (String, Bound<'_, PyDict>, usize) = s.extract().map_err(fail)?;
        out_stars.push(StarImport {
            importer,
            globals: globals.unbind(),
            module,
        });
    }
    Ok((out_copies, out_stars))
}

/// The reloaded modules as the commit begins, before the merge: what the
/// copies must still hold to follow, and which names a star importer
/// could already have had.
pub struct Before {
    /// The value of each copy's source name, in `plan.copies` order.
    values: Vec<Option<Py<PyAny>>>,
    /// The names of each module a star import copies from, by plan index.
    names: HashMap<usize, HashSet<String>>,
}

/// Takes [`Before`]: O(copies + names of the star-imported modules).
pub fn snapshot(py: Python<'_>, plan: &Plan) -> Before {
    let values = plan
        .copies
        .iter()
        .map(|c| {
            let module = plan.modules[c.module].module.bind(py).dict();
            module.get_item(c.name_key.bind(py)).ok().flatten().map(Bound::unbind)
        })
        .collect();
    let mut names = HashMap::new();
    for s in &plan.stars {
        names.entry(s.module).or_insert_with(|| {
            let module = plan.modules[s.module].module.bind(py).dict();
            module
                .keys()
                .iter()
                .filter_map(|k| k.extract::<String>().ok())
                .collect()
        });
    }
    Before { values, names }
}

/// Re-points the copies whose source name the update gave a new object, and
/// adds new public names to star importers. Runs in the commit, after the
/// merge and the transforms. Returns (module index, `importer.NAME`) for
/// the report.
pub fn follow(py: Python<'_>, plan: &Plan, before: &Before, journal: &mut Journal) -> PyResult<Vec<(usize, String)>> {
    let mut done = Vec::new();
    for (c, old) in plan.copies.iter().zip(&before.values) {
        let Some(old) = old else { continue };
        let globals = c.globals.bind(py);
        let held = globals.get_item(c.alias_key.bind(py))?;
        if !held.is_some_and(|held| held.is(old)) {
            continue; // rebound by the importer (or already re-pointed)
        }
        let module = plan.modules[c.module].module.bind(py).dict();
        let Some(new) = module.get_item(c.name_key.bind(py))? else {
            continue; // no longer defined: the copy stays
        };
        if new.is(old) {
            continue;
        }
        journal.set_item(globals, c.alias_key.bind(py).as_any(), &new)?;
        done.push((c.module, format!("{}.{}", c.importer, c.alias)));
    }
    for s in &plan.stars {
        let globals = s.globals.bind(py);
        let module = plan.modules[s.module].module.bind(py).dict();
        let had = before.names.get(&s.module);
        for name in public_names(&module)? {
            // Only what the update adds: a name the module had already was
            // copied by the import, or the importer chose not to have it.
            if had.is_some_and(|had| had.contains(&name)) || globals.contains(&name)? {
                continue;
            }
            let Some(value) = module.get_item(&name)? else { continue };
            journal.set_item(globals, PyString::new(py, &name).as_any(), &value)?;
            done.push((s.module, format!("{}.{name} (new, import *)", s.importer)));
        }
    }
    Ok(done)
}

/// What `from m import *` copies: `__all__`, or the names without a
/// leading underscore.
fn public_names(namespace: &Bound<'_, PyDict>) -> PyResult<Vec<String>> {
    if let Some(all) = namespace.get_item("__all__")? {
        return Ok(all
            .try_iter()?
            .filter_map(|n| n.ok()?.extract::<String>().ok())
            .collect());
    }
    Ok(namespace
        .keys()
        .iter()
        .filter_map(|k| k.extract::<String>().ok())
        .filter(|k| !k.starts_with('_'))
        .collect())
}

/// For `pyreload check`: the copies and star imports found, per module, as
/// `importer.ALIAS`, `importer.ALIAS (NAME)` or `importer (import *)`.
pub fn describe(plan: &Plan) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new(); plan.modules.len()];
    for c in &plan.copies {
        let label = if c.alias == c.name {
            format!("{}.{}", c.importer, c.alias)
        } else {
            format!("{}.{} ({})", c.importer, c.alias, c.name)
        };
        out[c.module].push(label);
    }
    for s in &plan.stars {
        out[s.module].push(format!("{} (import *)", s.importer));
    }
    for v in &mut out {
        v.sort();
        v.dedup();
    }
    out
}
