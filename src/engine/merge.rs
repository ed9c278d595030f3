//! Commit: merge the staged (new) modules into the live ones.
//!
//! The rule, also in README ("What a reload keeps"):
//!
//! - Functions and classes the module defines take the new code **in place**:
//!   a function keeps its identity and gets the new `__code__`, defaults and
//!   closure; a class keeps its identity and gets the new methods. So every
//!   reference the program already holds (`from m import f` copies, bound
//!   methods, live instances, dispatch tables) runs the new code. Only when
//!   that is impossible (a function whose closure changed shape) is the
//!   object replaced, and references to it in other modules re-pointed.
//! - Plain constants (numbers, strings, tuples of them, ...) take the new value.
//! - Data (dicts, lists, instances, anything mutable) keeps its running value,
//!   so `STORE = {}` at top level does not empty the store.
//! - `reset = [...]` and `keep = [...]` in the spec override the last two.
//! - Names the new source no longer defines are removed if they were
//!   functions or classes of the module, and kept otherwise.
//! - Inside a class, the same rule, with `keep`/`reset` as `Class.attr`.
//!   What the class statement defines is not data and follows the new
//!   source: dunders, enum sunders (`_member_map_`, ...), a NamedTuple's
//!   `_fields`, and an enum's members. A member with the same name and
//!   value keeps its identity (`pair_members`).
//!
//! Copies of the module's names in other modules follow afterwards, in
//! copies.rs.
//!
//! It runs in the stopped world (world.rs), so no other thread can observe a
//! half-merged program, even though a few small Python helpers run on the
//! control thread. Every change is journaled for rollback.

use std::collections::{HashMap, HashSet};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFunction, PyList, PyTuple, PyType};

use super::journal::{class_dict_get, Journal};
use super::stage::Staged;
use super::support::Support;
use crate::diagnostic::Problem;
use crate::plan::Plan;
use crate::report::ModuleReport;

/// How deep relinking follows containers built by a new module body.
const MAX_DEPTH: usize = 32;
/// How many objects relinking visits at most in one update.
const MAX_VISITS: usize = 200_000;
/// How deep patching follows closures (decorator wrappers around wrappers).
const MAX_CLOSURE_DEPTH: usize = 8;

type Key = usize;

fn key(obj: &Bound<'_, PyAny>) -> Key {
    obj.as_ptr() as Key
}

/// Merges every staged module into its live module. On error the journal
/// holds what was already changed; the caller rolls it back.
///
/// Which functions changed is decided afterwards, in [`Merged::finish`]:
/// comparing code objects is reporting, and must not lengthen the pause.
pub fn merge(
    py: Python<'_>,
    support: &Support<'_>,
    plan: &Plan,
    staged: &Staged,
    journal: &mut Journal,
) -> Result<Merged, Problem> {
    let merger = Merger::new(py, support, plan, staged, journal)
        .map_err(|e| support.problem(py, "could not start the commit", &e))?;
    merger.run()
}

/// The result of a merge whose report is not finished yet.
pub struct Merged {
    reports: Vec<ModuleReport>,
    pending: Pending,
    /// The staged classes whose contents went into a live class: garbage
    /// now (see `retained`).
    replaced_classes: Vec<Py<PyAny>>,
}

#[derive(Default)]
struct Pending {
    functions: Vec<PendingFunction>,
    /// (module index, qualified name, whether more than its methods' code changed)
    classes: Vec<(usize, String, bool)>,
}

/// A function patched in place: its old and new code, and those of the
/// functions patched through its closure (a decorator's wrapped function).
struct PendingFunction {
    module: usize,
    name: String,
    codes: Vec<(Py<PyAny>, Py<PyAny>)>,
    closure_changed: bool,
}

impl Merged {
    /// Adds names in other modules that followed the update (see copies.rs).
    pub fn add_rebound(&mut self, rebound: Vec<(usize, String)>) {
        for (module, label) in rebound {
            self.reports[module].rebound.push(label);
        }
    }

    pub fn replaced_classes(&self) -> &[Py<PyAny>] {
        &self.replaced_classes
    }

    /// Completes the report: which functions and classes really changed,
    /// comparing code while ignoring line numbers. Runs after the pause.
    pub fn finish(self, py: Python<'_>, support: &Support<'_>) -> Vec<ModuleReport> {
        let mut reports = self.reports;
        for f in self.pending.functions {
            let changed = f.closure_changed
                || f.codes
                    .iter()
                    .any(|(old, new)| !support.same_code(old.bind(py), new.bind(py)).unwrap_or(false));
            let report = &mut reports[f.module].functions;
            if changed {
                report.changed.push(f.name);
            } else {
                report.unchanged += 1;
            }
        }
        for (module, name, changed) in self.pending.classes {
            let prefix = format!("{name}.");
            let report = &mut reports[module];
            let methods_changed = report
                .functions
                .changed
                .iter()
                .chain(&report.functions.added)
                .chain(&report.functions.removed)
                .any(|f| f.starts_with(&prefix));
            if changed || methods_changed {
                report.classes.changed.push(name);
            } else {
                report.classes.unchanged += 1;
            }
        }
        for r in &mut reports {
            r.functions.sort();
            r.classes.sort();
            r.globals.sort();
            r.rebound.sort();
        }
        reports
    }
}

struct Pair<'py> {
    module: usize,
    old: Bound<'py, PyAny>,
    new: Bound<'py, PyAny>,
}

struct Merger<'a, 'py> {
    py: Python<'py>,
    support: &'a Support<'py>,
    plan: &'a Plan,
    journal: &'a mut Journal,
    /// Live modules and their staged counterparts, in plan order.
    live: Vec<Bound<'py, PyDict>>,
    staged: Vec<Bound<'py, PyDict>>,
    /// A new object → the live object that takes its place.
    twins: HashMap<Key, Bound<'py, PyAny>>,
    /// A staging namespace → the live module dict (to re-home functions).
    globals_map: HashMap<Key, Bound<'py, PyDict>>,
    /// A staging module object → the live module.
    module_map: HashMap<Key, Bound<'py, PyAny>>,
    /// Values the live modules already hold: relinking does not descend into
    /// the program's existing data.
    live_values: HashSet<Key>,
    visited: HashSet<Key>,
    /// Keeps every object used as a key alive, so no address is reused.
    keepalive: Vec<Bound<'py, PyAny>>,
    class_pairs: Vec<Pair<'py>>,
    function_pairs: Vec<Pair<'py>>,
    /// (module index, old, replacement): references elsewhere to re-point.
    replaced: Vec<(usize, Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    reports: Vec<ModuleReport>,
    function_type: Bound<'py, PyAny>,
    staticmethod_type: Bound<'py, PyAny>,
    classmethod_type: Bound<'py, PyAny>,
    property_type: Bound<'py, PyAny>,
    /// `enum.EnumType`: an enum's members are its definition (see
    /// `pair_members`).
    /// Enum members that kept their identity: (live member, new member),
    /// whose attributes `patch_class` brings up to date.
    members: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    truncated: bool,
}

impl<'a, 'py> Merger<'a, 'py> {
    fn new(
        py: Python<'py>,
        support: &'a Support<'py>,
        plan: &'a Plan,
        staged: &Staged,
        journal: &'a mut Journal,
    ) -> PyResult<Self> {
        let builtins = py.import("builtins")?;
        let mut m = Merger {
            py,
            support,
            plan,
            journal,
            live: Vec::new(),
            staged: Vec::new(),
            twins: HashMap::new(),
            globals_map: HashMap::new(),
            module_map: HashMap::new(),
            live_values: HashSet::new(),
            visited: HashSet::new(),
            keepalive: Vec::new(),
            class_pairs: Vec::new(),
            function_pairs: Vec::new(),
            replaced: Vec::new(),
            reports: Vec::new(),
            // The type of a plain function, without importing `types`: a
            // module the program has not loaded must not appear in it
            // during the commit (the update may be publishing its own).
            function_type: py.eval(c"(lambda: None).__class__", None, None)?.into_any(),
            staticmethod_type: builtins.getattr("staticmethod")?,
            classmethod_type: builtins.getattr("classmethod")?,
            property_type: builtins.getattr("property")?,
            members: Vec::new(),
            truncated: false,
        };
        for (plan_module, staging) in plan.modules.iter().zip(&staged.modules) {
            let live_module = plan_module.module.bind(py);
            let live = live_module.dict();
            let staging = staging.bind(py);
            let ns = staging.dict();
            m.globals_map.insert(key(ns.as_any()), live.clone());
            m.module_map
                .insert(key(staging.as_any()), live_module.clone().into_any());
            m.keepalive.push(staging.clone().into_any());
            for (_, v) in live.iter() {
                m.live_values.insert(key(&v));
                m.keepalive.push(v);
            }
            m.live.push(live);
            m.staged.push(ns);
            m.reports.push(ModuleReport {
                module: plan_module.name.clone(),
                source: plan_module.source.clone(),
                ..ModuleReport::default()
            });
        }
        Ok(m)
    }

    fn run(mut self) -> Result<Merged, Problem> {
        let py = self.py;
        let err = |e: PyErr| self.support.problem(py, "the commit failed", &e);
        for i in 0..self.live.len() {
            self.pair_module(i)?;
        }
        for i in 0..self.live.len() {
            self.merge_namespace(i).map_err(err)?;
        }
        let mut pending = Pending::default();
        let classes = std::mem::take(&mut self.class_pairs);
        for pair in &classes {
            let changed = self.patch_class(pair).map_err(|e| {
                self.support
                    .problem(py, &format!("could not update class `{}`", qualname(&pair.old)), &e)
            })?;
            pending.classes.push((pair.module, qualname(&pair.old), changed));
        }
        let functions = std::mem::take(&mut self.function_pairs);
        for pair in &functions {
            let mut codes = Vec::new();
            let closure_changed = self.patch_function(&pair.old, &pair.new, 0, &mut codes).map_err(|e| {
                self.support
                    .problem(py, &format!("could not update function `{}`", qualname(&pair.old)), &e)
            })?;
            pending.functions.push(PendingFunction {
                module: pair.module,
                name: qualname(&pair.old),
                codes,
                closure_changed,
            });
        }
        self.rebind_replaced().map_err(|e| {
            self.support
                .problem(py, "could not re-point references to replaced objects", &e)
        })?;
        if self.truncated {
            crate::process::log(format!("pyreload: relinking stopped after {MAX_VISITS} objects; some new objects may still refer to staging copies"));
        }
        let replaced_classes = classes.into_iter().map(|pair| pair.new.unbind()).collect();
        Ok(Merged {
            reports: self.reports,
            pending,
            replaced_classes,
        })
    }

    // ---- matching: which new object takes the place of which live one ----

    fn pair_module(&mut self, i: usize) -> Result<(), Problem> {
        let module = self.plan.modules[i].name.clone();
        let items: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = self.staged[i].iter().collect();
        for (name, new) in items {
            let name: String = name.extract().unwrap_or_default();
            if is_dunder(&name) {
                continue;
            }
            let old = self.live[i].get_item(&name).ok().flatten();
            if let Some(old) = old {
                self.pair(i, &module, &old, &new)?;
            }
        }
        Ok(())
    }

    fn pair(
        &mut self,
        i: usize,
        module: &str,
        old: &Bound<'py, PyAny>,
        new: &Bound<'py, PyAny>,
    ) -> Result<(), Problem> {
        if !defined_in(old, module) || !defined_in(new, module) || qualname(old) != qualname(new) {
            return Ok(());
        }
        if is_class(old) && is_class(new) {
            self.check_layout(module, old, new)?;
            self.add_twin(new, old);
            if self.is_enum(old) {
                self.pair_members(old, new).map_err(|e| {
                    self.support.problem(
                        self.py,
                        &format!("could not match the members of enum `{module}.{}`", qualname(old)),
                        &e,
                    )
                })?;
            }
            self.class_pairs.push(Pair {
                module: i,
                old: old.clone(),
                new: new.clone(),
            });
            let members: Vec<(String, Bound<'py, PyAny>)> = class_items(new);
            for (attr, nv) in members {
                let Some(ov) = class_dict_get(old, &attr).ok().flatten() else {
                    continue;
                };
                let ov = ov.into_bound(self.py);
                if is_class(&nv) || is_function(&nv) {
                    self.pair(i, module, &ov, &nv)?;
                } else if self.is_wrapper(&nv) && ov.get_type().is(nv.get_type()) {
                    if let (Ok(of), Ok(nf)) = (ov.getattr("__func__"), nv.getattr("__func__")) {
                        self.pair(i, module, &of, &nf)?;
                    }
                }
            }
        } else if is_function(old) && is_function(new) && same_freevars(old, new) {
            self.add_twin(new, old);
            self.function_pairs.push(Pair {
                module: i,
                old: old.clone(),
                new: new.clone(),
            });
        }
        Ok(())
    }

    /// An enum member keeps its identity when the new version has a member
    /// of the same name with the same value (of the same type): references
    /// the program holds, `is` comparisons and dict keys stay good. Any
    /// other member is the new version's object; an old member the new
    /// version drops, or gives another value, stays what it was (its name
    /// and value, an instance of the class) but is no longer a member.
    fn pair_members(&mut self, old: &Bound<'py, PyAny>, new: &Bound<'py, PyAny>) -> PyResult<()> {
        let (Some(old_map), Some(new_map)) = (
            class_dict_get(old, "_member_map_")?,
            class_dict_get(new, "_member_map_")?,
        ) else {
            return Ok(());
        };
        let (old_map, new_map) = (old_map.into_bound(self.py), new_map.into_bound(self.py));
        let new_map = new_map.cast::<PyDict>()?;
        for (name, nm) in new_map.iter() {
            let Ok(Some(om)) = old_map.get_item(&name).map(Some).or_else(|_| Ok::<_, PyErr>(None)) else {
                continue;
            };
            if self.twin_of(&nm).is_some() {
                continue; // an alias of a member already matched
            }
            let (ov, nv) = (om.getattr("_value_")?, nm.getattr("_value_")?);
            if om.get_type().is(old) && same_value(&ov, &nv) {
                self.add_twin(&nm, &om);
                self.members.push((om, nm));
            }
        }
        Ok(())
    }

    /// Whether `class` is an enum, known by its metaclass (`enum.EnumMeta`,
    /// called `EnumType` since 3.11) rather than by importing `enum`: the
    /// program may not have loaded it, and the update may be publishing the
    /// `enum` its new code imported.
    fn is_enum(&self, class: &Bound<'py, PyAny>) -> bool {
        let Ok(mro) = class.get_type().getattr("__mro__") else {
            return false;
        };
        let Ok(mro) = mro.try_iter() else { return false };
        mro.flatten().any(|meta| {
            let module = meta.getattr("__module__").ok().and_then(|m| m.extract::<String>().ok());
            let name = meta.getattr("__name__").ok().and_then(|n| n.extract::<String>().ok());
            module.as_deref() == Some("enum") && matches!(name.as_deref(), Some("EnumMeta" | "EnumType"))
        })
    }

    fn add_twin(&mut self, new: &Bound<'py, PyAny>, old: &Bound<'py, PyAny>) {
        self.twins.insert(key(new), old.clone());
        self.keepalive.push(new.clone());
    }

    fn twin_of(&self, new: &Bound<'py, PyAny>) -> Option<&Bound<'py, PyAny>> {
        self.twins.get(&key(new))
    }

    /// Live instances keep their memory layout when their class is patched,
    /// so the new class must have the same one.
    fn check_layout(&self, module: &str, old: &Bound<'py, PyAny>, new: &Bound<'py, PyAny>) -> Result<(), Problem> {
        let mut differences = Vec::new();
        for attr in ["__basicsize__", "__itemsize__", "__dictoffset__", "__weakrefoffset__"] {
            let (a, b) = (old.getattr(attr).ok(), new.getattr(attr).ok());
            let same = match (&a, &b) {
                (Some(a), Some(b)) => a.eq(b).unwrap_or(false),
                _ => false,
            };
            if !same {
                differences.push(attr.to_string());
            }
        }
        let slots = |c: &Bound<'py, PyAny>| {
            class_dict_get(c, "__slots__")
                .ok()
                .flatten()
                .map(|s| s.into_bound(self.py))
        };
        let same_slots = match (slots(old), slots(new)) {
            (None, None) => true,
            (Some(a), Some(b)) => a.eq(b).unwrap_or(false),
            _ => false,
        };
        if !same_slots {
            differences.push("__slots__".into());
        }
        let (old_meta, new_meta) = (old.get_type(), new.get_type());
        let meta_ok = old_meta.is(&new_meta)
            || self.twin_of(new_meta.as_any()).is_some_and(|t| t.is(&old_meta))
            || (defined_in(old_meta.as_any(), module) && qualname(old_meta.as_any()) == qualname(new_meta.as_any()));
        if !meta_ok {
            differences.push("metaclass".into());
        }
        if differences.is_empty() {
            return Ok(());
        }
        Err(Problem::new(format!(
            "class `{module}.{}` changes its instance layout ({}); its live instances cannot take the new class in place",
            qualname(old),
            differences.join(", ")
        ))
        .with_help("keep the class's __slots__, metaclass and built-in base as they are (a [[transform]] can move data between attributes), or restart the program: CPython cannot change the memory layout of objects that exist"))
    }

    // ---- the namespace rule ----

    fn merge_namespace(&mut self, i: usize) -> PyResult<()> {
        let module = self.plan.modules[i].name.clone();
        let live = self.live[i].clone();
        let items: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = self.staged[i].iter().collect();
        let mut new_names = HashSet::new();
        for (key_obj, new) in items {
            let name: String = key_obj.extract()?;
            new_names.insert(name.clone());
            if is_module_machinery(&name) {
                continue;
            }
            if is_module_definition(&name) {
                let nv = self.relink(&new)?;
                if live.get_item(&name)?.is_none_or(|old| !old.is(&nv)) {
                    self.journal.set_item(&live, &key_obj, &nv)?;
                }
                continue;
            }
            let Some(old) = live.get_item(&name)? else {
                let nv = self.relink(&new)?;
                self.journal.set_item(&live, &key_obj, &nv)?;
                let report = &mut self.reports[i];
                if defined_in(&new, &module) && is_function(&new) {
                    report.functions.added.push(name);
                } else if defined_in(&new, &module) && is_class(&new) {
                    report.classes.added.push(name);
                } else if !self.support.is_code_like(&new)? {
                    report.globals.added.push(name);
                }
                continue;
            };
            if self.twin_of(&new).is_some_and(|t| t.is(&old)) {
                continue; // patched in place later
            }
            let plan = &self.plan.modules[i];
            if plan.reset.contains(&name) {
                let nv = self.relink(&new)?;
                self.journal.set_item(&live, &key_obj, &nv)?;
                self.reports[i].globals.reset.push(name);
            } else if plan.keep.contains(&name) {
                self.reports[i].globals.kept.push(name);
            } else if plan.transformed.contains(&name) {
                self.reports[i].globals.transformed.push(name);
            } else if (is_function(&old) || is_class(&old)) && defined_in(&old, &module) {
                // Same name, but it cannot be patched in place.
                let nv = self.relink(&new)?;
                self.journal.set_item(&live, &key_obj, &nv)?;
                let label = format!("{name} (replaced)");
                if is_class(&old) {
                    self.reports[i].classes.changed.push(label);
                } else {
                    self.reports[i].functions.changed.push(label);
                }
                self.replaced.push((i, old, nv));
            } else if self.support.is_code_like(&new)? {
                // Imported names and modules follow the new source.
                let nv = self.relink(&new)?;
                if !nv.is(&old) {
                    self.journal.set_item(&live, &key_obj, &nv)?;
                }
            } else if self.support.is_constant(&new)? && self.support.is_constant(&old)? {
                if !same_value(&old, &new) {
                    self.journal.set_item(&live, &key_obj, &new)?;
                    self.reports[i].globals.updated.push(name);
                }
            } else {
                // Data: it keeps its running value (even when the new body
                // bound the very same object, as an import from a module the
                // update does not touch does).
                self.reports[i].globals.kept.push(name);
            }
        }
        let old_items: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = live.iter().collect();
        for (key_obj, old) in old_items {
            let name: String = key_obj.extract()?;
            if new_names.contains(&name) || is_module_machinery(&name) || !defined_in(&old, &module) {
                continue;
            }
            if is_function(&old) {
                self.journal.del_item(&live, &key_obj)?;
                self.reports[i].functions.removed.push(name);
            } else if is_class(&old) {
                self.journal.del_item(&live, &key_obj)?;
                self.reports[i].classes.removed.push(name);
            }
        }
        Ok(())
    }

    // ---- patching in place ----

    /// Gives a live class the new version's methods and attributes. Returns
    /// whether anything other than its methods' code changed.
    fn patch_class(&mut self, pair: &Pair<'py>) -> PyResult<bool> {
        let (old, new) = (&pair.old, &pair.new);
        let class_name = qualname(old);
        let mut changed = false;

        let new_bases = self.relink(&new.getattr("__bases__")?)?;
        if !new_bases.eq(old.getattr("__bases__")?)? {
            self.journal.set_attr(old, "__bases__", &new_bases)?;
            changed = true;
        }
        let module = self.plan.modules[pair.module].name.clone();
        // An enum's member table and sunder attributes, a NamedTuple's
        // fields, a dataclass's fields and `__match_args__`: what the class
        // statement defines, not data the program keeps in the class.
        let mut members = HashSet::new();
        if self.is_enum(old) {
            for class in [old, new] {
                if let Some(map) = class_dict_get(class, "_member_map_")? {
                    for name in map.bind(self.py).try_iter()? {
                        members.insert(name?.extract::<String>()?);
                    }
                }
            }
        }
        let definition = |attr: &str| {
            is_dunder(attr)
                || is_sunder(attr)
                || matches!(attr, "_fields" | "_field_defaults")
                || members.contains(attr)
        };
        // Members that kept their identity take the new version's
        // attributes (`_sort_order_`, what a new `__init__` set).
        let kept_members: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = self
            .members
            .iter()
            .filter(|(om, _)| om.get_type().is(old))
            .cloned()
            .collect();
        for (om, nm) in kept_members {
            let (Ok(od), Ok(nd)) = (om.getattr("__dict__"), nm.getattr("__dict__")) else {
                continue;
            };
            let od = od.cast_into::<PyDict>()?;
            for (k, v) in nd.cast_into::<PyDict>()?.iter() {
                let v = self.relink(&v)?;
                if od.get_item(&k)?.is_none_or(|o| !same_value(&o, &v)) {
                    self.journal.set_item(&od, &k, &v)?;
                }
            }
        }
        let old_values = if members.is_empty() {
            None
        } else {
            class_dict_get(old, "_value2member_map_")?.map(|v| v.into_bound(self.py))
        };
        // Whether `keep` or `reset` names an attribute of this class.
        let prefix = format!("{class_name}.");
        let plan_module = &self.plan.modules[pair.module];
        let class_listed = plan_module
            .keep
            .iter()
            .chain(&plan_module.reset)
            .any(|n| n.starts_with(&prefix));
        let new_items = class_items(new);
        let new_names: HashSet<String> = new_items.iter().map(|(n, _)| n.clone()).collect();
        // The member table first: an enum refuses to set a name that its
        // current table lists.
        let mut new_items = new_items;
        new_items.sort_by_key(|(attr, _)| attr != "_member_map_");
        for (attr, nv) in new_items {
            if matches!(attr.as_str(), "__dict__" | "__weakref__") || self.is_slot_descriptor(&nv) {
                continue;
            }
            if class_listed {
                let dotted = format!("{class_name}.{attr}");
                if self.plan.modules[pair.module].keep.contains(&dotted) {
                    self.reports[pair.module].globals.kept.push(dotted);
                    continue;
                }
                if self.plan.modules[pair.module].reset.contains(&dotted) {
                    let v = self.relink(&nv)?;
                    self.journal.set_class_attr(old, &attr, Some(&v))?;
                    self.reports[pair.module].globals.reset.push(dotted);
                    changed = true;
                    continue;
                }
            }
            let Some(ov) = class_dict_get(old, &attr)? else {
                let v = self.relink(&nv)?;
                self.journal.set_class_attr(old, &attr, Some(&v))?;
                if self.support.is_code_like(&nv)? {
                    self.reports[pair.module]
                        .functions
                        .added
                        .push(format!("{class_name}.{attr}"));
                }
                changed = true;
                continue;
            };
            let ov = ov.into_bound(self.py);
            if self.twin_of(&nv).is_some_and(|t| t.is(&ov)) {
                continue;
            }
            if self.is_wrapper(&nv) && ov.get_type().is(nv.get_type()) {
                if let (Ok(of), Ok(nf)) = (ov.getattr("__func__"), nv.getattr("__func__")) {
                    // The same function in a fresh wrapper (3.12's enum gives
                    // each class its own `staticmethod` of
                    // `Enum._generate_next_value_`), or the twin of the old one.
                    if nf.is(&of) || self.twin_of(&nf).is_some_and(|t| t.is(&of)) {
                        continue;
                    }
                }
            }
            if self.support.is_code_like(&nv)? || self.support.is_code_like(&ov)? {
                let v = self.relink(&nv)?;
                self.journal.set_class_attr(old, &attr, Some(&v))?;
                if (is_function(&nv) && defined_in(&nv, &module))
                    || self.is_wrapper(&nv)
                    || nv.is_instance(&self.property_type)?
                {
                    self.reports[pair.module]
                        .functions
                        .changed
                        .push(format!("{class_name}.{attr} (replaced)"));
                }
                changed = true;
            } else if (definition(&attr) || (self.support.is_constant(&nv)? && self.support.is_constant(&ov)?))
                && !same_value(&ov, &nv)
            {
                let v = self.relink(&nv)?;
                if !v.is(&ov) {
                    self.journal.set_class_attr(old, &attr, Some(&v))?;
                    changed |= !is_dunder(&attr);
                }
            }
            // Anything else is class-level data the program owns: kept.
        }
        for (attr, ov) in class_items(old) {
            if new_names.contains(&attr)
                || self.is_slot_descriptor(&ov)
                || matches!(attr.as_str(), "__dict__" | "__weakref__")
            {
                continue;
            }
            if self.support.is_code_like(&ov)? {
                self.journal.set_class_attr(old, &attr, None)?;
                self.reports[pair.module]
                    .functions
                    .removed
                    .push(format!("{class_name}.{attr}"));
                changed = true;
            } else if definition(&attr) {
                // A member the new version drops, a stale `__hash__ = None`,
                // a field table: no longer part of the definition.
                self.journal.set_class_attr(old, &attr, None)?;
                if members.contains(&attr) {
                    self.reports[pair.module]
                        .globals
                        .removed
                        .push(format!("{class_name}.{attr}"));
                }
                changed = true;
            }
        }
        if let (Some(old_values), Some(new_values)) = (old_values, class_dict_get(old, "_value2member_map_")?) {
            let new_values = new_values.into_bound(self.py).cast_into::<PyDict>()?;
            if class_dict_get(old, "_flag_mask_")?.is_some() && !new_values.is(&old_values) {
                for (value, member) in self.support.flag_pseudo_members(&old_values, &new_values)? {
                    self.journal.set_item(&new_values, &value, &member)?;
                }
            }
        }
        Ok(changed)
    }

    /// Gives a live function the new version's code, defaults and closure
    /// contents, keeping its identity. Collects (old, new) code pairs in
    /// `codes` for the report; returns whether a closure cell took a new
    /// non-function value.
    fn patch_function(
        &mut self,
        old: &Bound<'py, PyAny>,
        new: &Bound<'py, PyAny>,
        depth: usize,
        codes: &mut Vec<(Py<PyAny>, Py<PyAny>)>,
    ) -> PyResult<bool> {
        if old.is(new) {
            return Ok(false);
        }
        let (old_code, new_code) = (old.getattr("__code__")?, new.getattr("__code__")?);
        let mut changed = false;
        self.journal.set_attr(old, "__code__", &new_code)?;
        codes.push((old_code.unbind(), new_code.unbind()));
        for attr in ["__defaults__", "__kwdefaults__", "__annotations__", "__doc__"] {
            let nv = self.relink(&new.getattr(attr)?)?;
            if !nv.is(old.getattr(attr)?) {
                self.journal.set_attr(old, attr, &nv)?;
            }
        }
        let new_dict = new.getattr("__dict__")?;
        if new_dict.len()? > 0 {
            let merged = old.getattr("__dict__")?.cast_into::<PyDict>()?.copy()?;
            merged.update(self.relink(&new_dict)?.cast::<PyMapping>()?)?;
            self.journal.set_attr(old, "__dict__", merged.as_any())?;
        }
        let (old_closure, new_closure) = (old.getattr("__closure__")?, new.getattr("__closure__")?);
        if let (Ok(oc), Ok(nc)) = (old_closure.cast::<PyTuple>(), new_closure.cast::<PyTuple>()) {
            for (ocell, ncell) in oc.iter().zip(nc.iter()) {
                let Some(nv) = cell_contents(&ncell) else { continue };
                let ov = cell_contents(&ocell);
                if let Some(ov) = &ov {
                    if ov.is(&nv) {
                        continue;
                    }
                    if depth < MAX_CLOSURE_DEPTH && is_function(ov) && is_function(&nv) && same_freevars(ov, &nv) {
                        // A decorator's wrapper: update the wrapped function
                        // in place too, so the wrapper calls the new code.
                        self.add_twin(&nv, ov);
                        changed |= self.patch_function(ov, &nv, depth + 1, codes)?;
                        continue;
                    }
                }
                let v = self.relink(&nv)?;
                if ov.as_ref().is_none_or(|ov| !ov.is(&v)) {
                    self.journal.set_cell(&ocell, &v)?;
                    changed = true;
                }
            }
        }
        Ok(changed)
    }

    /// Points every reference that other modules hold to a replaced object
    /// at its replacement (the `from m import f` copies).
    fn rebind_replaced(&mut self) -> PyResult<()> {
        if self.replaced.is_empty() {
            return Ok(());
        }
        let targets: HashMap<Key, (usize, Bound<'py, PyAny>)> = self
            .replaced
            .iter()
            .map(|(i, old, new)| (key(old), (*i, new.clone())))
            .collect();
        let updated: HashSet<String> = self.plan.modules.iter().map(|m| m.name.clone()).collect();
        let modules = self
            .py
            .import("sys")?
            .getattr("modules")?
            .cast_into::<PyDict>()?
            .copy()?;
        for (name, module) in modules.iter() {
            let name: String = name.extract().unwrap_or_default();
            if updated.contains(&name) {
                continue;
            }
            let Ok(Some(dict)) = module.getattr_opt("__dict__") else {
                continue;
            };
            let Ok(dict) = dict.cast_into::<PyDict>() else { continue };
            let items: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = dict.iter().collect();
            for (k, v) in items {
                if let Some((i, new)) = targets.get(&key(&v)) {
                    self.journal.set_item(&dict, &k, new)?;
                    let attr: String = k.extract().unwrap_or_default();
                    self.reports[*i].rebound.push(format!("{name}.{attr}"));
                }
            }
        }
        Ok(())
    }

    // ---- relinking: new objects must refer to live ones, not staging ----

    /// Returns the object the program should hold instead of `obj`: its
    /// live twin, a re-homed copy of a staged function, or `obj` itself with
    /// the references inside it relinked.
    fn relink(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.journal.begin_relinking();
        let relinked = self.relink_at(obj, 0);
        self.journal.end_relinking();
        relinked
    }

    fn relink_at(&mut self, obj: &Bound<'py, PyAny>, depth: usize) -> PyResult<Bound<'py, PyAny>> {
        let k = key(obj);
        if let Some(t) = self.twins.get(&k) {
            return Ok(t.clone());
        }
        if let Some(m) = self.module_map.get(&k) {
            return Ok(m.clone());
        }
        if depth > MAX_DEPTH || self.live_values.contains(&k) || self.visited.contains(&k) {
            return Ok(obj.clone());
        }
        if self.visited.len() >= MAX_VISITS {
            self.truncated = true;
            return Ok(obj.clone());
        }
        self.visited.insert(k);
        self.keepalive.push(obj.clone());

        if is_function(obj) {
            let globals = obj.getattr("__globals__")?;
            if let Some(live) = self.globals_map.get(&key(&globals)).cloned() {
                return self.rehome_function(obj, &live, depth);
            }
            return Ok(obj.clone());
        }
        if let Ok(dict) = obj.cast::<PyDict>() {
            let items: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = dict.iter().collect();
            for (k, v) in items {
                let nv = self.relink_at(&v, depth + 1)?;
                if !nv.is(&v) {
                    self.journal.set_item(dict, &k, &nv)?;
                }
            }
            return Ok(obj.clone());
        }
        if let Ok(list) = obj.cast::<PyList>() {
            for index in 0..list.len() {
                let v = list.get_item(index)?;
                let nv = self.relink_at(&v, depth + 1)?;
                if !nv.is(&v) {
                    self.journal.set_list_item(list, index, &nv)?;
                }
            }
            return Ok(obj.clone());
        }
        if let Ok(tuple) = obj.cast_exact::<PyTuple>() {
            let mut items = Vec::with_capacity(tuple.len());
            let mut any_changed = false;
            for v in tuple.iter() {
                let nv = self.relink_at(&v, depth + 1)?;
                any_changed |= !nv.is(&v);
                items.push(nv);
            }
            return if any_changed {
                Ok(PyTuple::new(self.py, items)?.into_any())
            } else {
                Ok(obj.clone())
            };
        }
        if self.is_wrapper(obj) {
            let f = obj.getattr("__func__")?;
            let nf = self.relink_at(&f, depth + 1)?;
            return if nf.is(&f) {
                Ok(obj.clone())
            } else {
                obj.get_type().call1((nf,))
            };
        }
        if obj.is_instance(&self.property_type)? {
            let mut parts = Vec::new();
            let mut any_changed = false;
            for attr in ["fget", "fset", "fdel"] {
                let v = obj.getattr(attr)?;
                let nv = self.relink_at(&v, depth + 1)?;
                any_changed |= !nv.is(&v);
                parts.push(nv);
            }
            if !any_changed {
                return Ok(obj.clone());
            }
            let doc = obj.getattr("__doc__")?;
            return obj.get_type().call1((&parts[0], &parts[1], &parts[2], doc));
        }
        if is_class(obj) {
            // A class new in this version: its methods were created in the
            // staging namespace and must be re-homed.
            if self.is_staged_definition(obj) {
                for (attr, v) in class_items(obj) {
                    if matches!(attr.as_str(), "__dict__" | "__weakref__") {
                        continue;
                    }
                    let nv = self.relink_at(&v, depth + 1)?;
                    if !nv.is(&v) {
                        self.journal.set_class_attr(obj, &attr, Some(&nv))?;
                    }
                }
            }
            return Ok(obj.clone());
        }
        // An instance of a class from an updated module: give it the live
        // class and relink its attributes.
        let cls = obj.get_type();
        let live_class = self.twin_of(cls.as_any()).cloned();
        if let Some(live_class) = &live_class {
            self.journal.set_attr(obj, "__class__", live_class)?;
        }
        if live_class.is_some() || self.is_staged_definition(cls.as_any()) {
            if let Ok(Some(d)) = obj.getattr_opt("__dict__") {
                self.relink_at(&d, depth + 1)?;
            }
        }
        Ok(obj.clone())
    }

    /// A function created while staging has the staging namespace as its
    /// globals, which is read-only; make the same function over the live
    /// module's globals.
    fn rehome_function(
        &mut self,
        f: &Bound<'py, PyAny>,
        live: &Bound<'py, PyDict>,
        depth: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let rehomed = self.function_type.call1((
            f.getattr("__code__")?,
            live,
            f.getattr("__name__")?,
            self.py.None(),
            f.getattr("__closure__")?,
        ))?;
        self.add_twin(f, &rehomed);
        for attr in ["__qualname__", "__module__", "__doc__", "__annotations__"] {
            rehomed.setattr(attr, f.getattr(attr)?)?;
        }
        for attr in ["__defaults__", "__kwdefaults__"] {
            let v = f.getattr(attr)?;
            if !v.is_none() {
                rehomed.setattr(attr, self.relink_at(&v, depth + 1)?)?;
            }
        }
        let d = f.getattr("__dict__")?;
        if d.len()? > 0 {
            rehomed.setattr("__dict__", self.relink_at(&d, depth + 1)?)?;
        }
        if let Ok(closure) = f.getattr("__closure__")?.cast_into::<PyTuple>() {
            for cell in closure.iter() {
                if let Some(v) = cell_contents(&cell) {
                    let nv = self.relink_at(&v, depth + 1)?;
                    if !nv.is(&v) {
                        self.journal.set_cell(&cell, &nv)?;
                    }
                }
            }
        }
        Ok(rehomed)
    }

    fn is_staged_definition(&self, class: &Bound<'py, PyAny>) -> bool {
        let Ok(module) = class.getattr("__module__").and_then(|m| m.extract::<String>()) else {
            return false;
        };
        self.plan.modules.iter().any(|m| m.name == module)
            && self.twin_of(class).is_none()
            && !self.live_values.contains(&key(class))
    }

    fn is_wrapper(&self, obj: &Bound<'py, PyAny>) -> bool {
        obj.is_instance(&self.staticmethod_type).unwrap_or(false)
            || obj.is_instance(&self.classmethod_type).unwrap_or(false)
    }

    /// `__slots__` members and `__dict__`/`__weakref__` accessors are tied to
    /// the class that created them and must stay the live class's own.
    fn is_slot_descriptor(&self, obj: &Bound<'py, PyAny>) -> bool {
        let name = obj.get_type().name().map(|n| n.to_string()).unwrap_or_default();
        matches!(name.as_str(), "member_descriptor" | "getset_descriptor")
    }
}

use pyo3::types::PyMapping;

/// The same object, or an equal value of the same type (so `1` and `True`
/// differ, as do `1` and `1.0`).
fn same_value(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> bool {
    a.is(b) || (a.get_type().is(b.get_type()) && a.eq(b).unwrap_or(false))
}

/// The names the import system gives every module (`__name__`,
/// `__spec__`, ...). They say which module this is, so a reload keeps them;
/// other dunders a module defines itself (`__version__`, `__getattr__`)
/// follow the same rule as any other global.
pub fn is_module_machinery(name: &str) -> bool {
    matches!(
        name,
        "__name__"
            | "__qualname__"
            | "__file__"
            | "__cached__"
            | "__loader__"
            | "__spec__"
            | "__package__"
            | "__path__"
            | "__builtins__"
    )
}

/// Module dunders that describe the source itself: they always take the
/// new source's value.
pub fn is_module_definition(name: &str) -> bool {
    matches!(name, "__doc__" | "__all__" | "__annotations__")
}

fn is_dunder(name: &str) -> bool {
    name.len() > 4 && name.starts_with("__") && name.ends_with("__")
}

/// `_name_`: the names enum reserves for its machinery.
fn is_sunder(name: &str) -> bool {
    name.len() > 2
        && name.starts_with('_')
        && name.ends_with('_')
        && !name[1..].starts_with('_')
        && !name[..name.len() - 1].ends_with('_')
}

fn is_function(obj: &Bound<'_, PyAny>) -> bool {
    obj.cast::<PyFunction>().is_ok()
}

fn is_class(obj: &Bound<'_, PyAny>) -> bool {
    obj.cast::<PyType>().is_ok()
}

/// A function or class whose `__module__` is `module`.
fn defined_in(obj: &Bound<'_, PyAny>, module: &str) -> bool {
    (is_function(obj) || is_class(obj))
        && obj
            .getattr("__module__")
            .and_then(|m| m.extract::<String>())
            .is_ok_and(|m| m == module)
}

fn qualname(obj: &Bound<'_, PyAny>) -> String {
    obj.getattr("__qualname__")
        .and_then(|q| q.extract())
        .unwrap_or_else(|_| "?".to_string())
}

/// A function's `__code__` can only be replaced by code with the same free
/// variables, because the closure cells stay.
fn same_freevars(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> bool {
    fn freevars<'py>(f: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        f.getattr("__code__")?.getattr("co_freevars")
    }
    match (freevars(a), freevars(b)) {
        (Ok(x), Ok(y)) => x.eq(y).unwrap_or(false),
        _ => false,
    }
}

fn cell_contents<'py>(cell: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    cell.getattr("cell_contents").ok()
}

/// A class's own namespace, as (name, raw value) pairs.
fn class_items<'py>(class: &Bound<'py, PyAny>) -> Vec<(String, Bound<'py, PyAny>)> {
    let Ok(items) = class
        .getattr("__dict__")
        .and_then(|d| d.call_method0("items"))
        .and_then(|i| i.try_iter().map(|it| it.collect::<Vec<_>>()))
    else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| item.ok()?.extract::<(String, Bound<'py, PyAny>)>().ok())
        .collect()
}
