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
//!
//! Most of it is worked out before that, with the program running: at the
//! end of stage, [`pair_ahead`] pairs new objects with live ones, finds the
//! rebind list, and runs the whole merge below through a *planning*
//! journal, which records each write with the value its target held
//! instead of making it (journal.rs). The stopped world then checks that
//! nothing the plan read changed (seen.rs: a version tag or a few pointers
//! per dict, function and class) and replays the writes, each checked
//! against what it expects and journaled as in a merge made there; any
//! difference undoes the replay and merges in the pause, as without a
//! plan. What is left in the pause is the stores themselves.

use std::collections::HashSet;
use std::time::Instant;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFunction, PyList, PyString, PyTuple, PyType};

use super::classify;
use super::journal::{class_dict, class_dict_get, Journal};
use super::journal::{Planned, Replay};
use super::ptrmap::{AddressMap, AddressSet};
use super::seen::Seen;
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
    let mut report = AheadReport::default();
    let ahead = match &staged.ahead {
        Some(ahead) => {
            report.computed_ms = ahead.computed_ms;
            report.rebind_entries = ahead.rebind.entries.len();
            // Nothing noted changed: no read can have; otherwise (or with
            // nothing noted) each read is checked, for the count.
            let holds = ahead.seen.as_ref().is_some_and(|seen| seen.holds(py));
            report.stale = if holds { 0 } else { ahead.stale(py) };
            report.seen = ahead.seen.as_ref().map_or(0, Seen::noted);
            (report.stale == 0).then_some((ahead, holds))
        }
        None => None,
    };
    if let Some((ahead, true)) = ahead {
        let writes = ahead.writes.lock().ok().and_then(|mut w| w.take());
        if let Some(writes) = writes {
            report.planned_writes = writes.writes.len();
            let mark = journal.mark();
            match journal.replay(py, &writes.writes) {
                Ok(()) => {
                    report.reused = true;
                    report.planned = true;
                    return writes.finish(py, support, plan, journal, &ahead.rebind, report);
                }
                Err(Replay::Failed(e)) => return Err(support.problem(py, "the commit failed", &e)),
                Err(Replay::Stale) => {
                    // A target changed that no noted read covered: undo what
                    // the replay made and merge here, as without a plan.
                    report.plan_stale = true;
                    let errors = journal.undo_to(py, support, mark);
                    if let Some(e) = errors.first() {
                        return Err(support.problem(py, "could not undo the planned merge", e));
                    }
                }
            }
        }
    } else if staged
        .ahead
        .as_ref()
        .is_some_and(|a| a.writes.lock().is_ok_and(|w| w.is_some()))
    {
        report.plan_stale = true;
    }
    let mut merger = Merger::new(py, support, plan, &staged.modules, journal, None)
        .map_err(|e| support.problem(py, "could not start the commit", &e))?;
    match ahead.map(|(a, _)| a) {
        Some(ahead) => {
            merger.adopt(ahead);
            report.reused = true;
        }
        None => {
            for i in 0..merger.live.len() {
                merger.pair_module(i)?;
            }
        }
    }
    let mut merged = merger.run(ahead.map(|(a, _)| &a.rebind))?;
    merged.ahead = report;
    Ok(merged)
}

/// Pairs the staged modules with the live ones ahead of the pause, with the
/// program running, and finds who refers to what the merge will replace:
/// the part of the merge that reads the program without changing it. The
/// commit checks that what it read still holds ([`Ahead::stale`]) and
/// does it again in the pause only if not. None when pairing fails: the
/// commit then meets the same failure where it always has.
pub fn pair_ahead(
    py: Python<'_>,
    support: &Support<'_>,
    plan: &Plan,
    staged: &[Py<pyo3::types::PyModule>],
) -> Option<Ahead> {
    let t = Instant::now();
    let mut scratch = Journal::planning();
    let mut merger = Merger::new(py, support, plan, staged, &mut scratch, Some(Seen::default())).ok()?;
    for i in 0..merger.live.len() {
        merger.pair_module(i).ok()?;
    }
    let rebind = merger.rebind_ahead().ok()?;
    let unbind = |pairs: &[Pair<'_>]| {
        pairs
            .iter()
            .map(|p| (p.module, p.old.clone().unbind(), p.new.clone().unbind()))
            .collect()
    };
    let ahead = Ahead {
        twins: merger
            .twin_pairs
            .iter()
            .map(|(new, old)| (new.clone().unbind(), old.clone().unbind()))
            .collect(),
        class_pairs: unbind(&merger.class_pairs),
        function_pairs: unbind(&merger.function_pairs),
        members: merger
            .members
            .iter()
            .map(|(o, n)| (o.clone().unbind(), n.clone().unbind()))
            .collect(),
        reads: merger.reads.drain(..).map(Read::unbind).collect(),
        rebind,
        seen: None,
        writes: std::sync::Mutex::new(None),
        moved: Vec::new(),
        computed_ms: 0.0,
    };
    // The merge's writes, planned: made by the same code as in the pause,
    // through a journal that records them instead. A merge that fails here
    // leaves no plan (nor what it noted: the commit then checks the
    // pairing's reads one by one), and the commit meets the same failure
    // in the pause.
    let mut ahead = ahead;
    if let Ok(written) = merger.write() {
        let Written {
            replaced,
            truncated,
            seen,
            merged,
            ..
        } = written;
        ahead.seen = seen;
        ahead.moved = merged
            .moved
            .iter()
            .map(|(_, old, new)| (old.clone_ref(py), new.clone_ref(py)))
            .collect();
        let writes = scratch.into_planned();
        *ahead.writes.get_mut().ok()? = Some(WritePlan {
            writes,
            replaced: replaced
                .into_iter()
                .map(|(i, old, new)| (i, old.unbind(), new.unbind()))
                .collect(),
            truncated,
            merged,
        });
    }
    ahead.computed_ms = t.elapsed().as_secs_f64() * 1000.0;
    Some(ahead)
}

/// The merge's changes to the program, decided ahead of the pause
/// ([`pair_ahead`]), with what it reports.
struct WritePlan {
    writes: Vec<Planned>,
    /// (module index, old, replacement): references elsewhere to re-point.
    replaced: Vec<(usize, Py<PyAny>, Py<PyAny>)>,
    truncated: bool,
    merged: Merged,
}

impl WritePlan {
    /// After the replay: re-points the references to replaced objects, as
    /// the merge in the pause does.
    fn finish(
        self,
        py: Python<'_>,
        support: &Support<'_>,
        plan: &Plan,
        journal: &mut Journal,
        rebind: &RebindAhead,
        report: AheadReport,
    ) -> Result<Merged, Problem> {
        let replaced: Vec<_> = self
            .replaced
            .iter()
            .map(|(i, old, new)| (*i, old.bind(py).clone(), new.bind(py).clone()))
            .collect();
        let mut merged = self.merged;
        rebind_replaced(py, plan, journal, &replaced, &mut merged.reports, Some(rebind))
            .map_err(|e| support.problem(py, "could not re-point references to replaced objects", &e))?;
        if self.truncated {
            crate::process::log(format!("pyreload: relinking stopped after {MAX_VISITS} objects; some new objects may still refer to staging copies"));
        }
        merged.ahead = report;
        merged.spent = self.writes;
        Ok(merged)
    }
}

/// What [`pair_ahead`] found, kept from stage to the commit.
pub struct Ahead {
    /// (new, old): the live object that takes each new one's place.
    twins: Vec<(Py<PyAny>, Py<PyAny>)>,
    class_pairs: Vec<(usize, Py<PyAny>, Py<PyAny>)>,
    function_pairs: Vec<(usize, Py<PyAny>, Py<PyAny>)>,
    members: Vec<(Py<PyAny>, Py<PyAny>)>,
    /// Every read of the live program the pairing depended on.
    reads: Vec<ReadOwned>,
    rebind: RebindAhead,
    /// What the pairing and the planned merge read, noted cheaply; None
    /// when the merge could not be planned.
    seen: Option<Seen>,
    /// The merge's writes, planned; taken by the commit that replays them.
    writes: std::sync::Mutex<Option<WritePlan>>,
    /// (code now, new code) of the functions whose code only moved, held
    /// so that their addresses stay theirs (see `Merger::moved_ahead`).
    moved: Vec<(Py<PyAny>, Py<PyAny>)>,
    computed_ms: f64,
}

impl Ahead {
    /// How many of the reads the pairing made no longer hold: a module or
    /// class the program changed since. Pointer comparisons, one dict
    /// lookup each.
    pub fn stale(&self, py: Python<'_>) -> usize {
        self.reads.iter().filter(|r| !r.holds(py)).count()
    }
}

/// For the report: whether the commit could use the pairing made ahead.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AheadReport {
    /// The pairing was made ahead of the pause and still held.
    pub reused: bool,
    /// Reads of the live program that no longer held at the commit.
    pub stale: usize,
    /// Time spent pairing ahead, with the program running.
    pub computed_ms: f64,
    /// References to objects the merge replaces, found ahead.
    pub rebind_entries: usize,
    /// The merge's writes were planned ahead and replayed in the pause.
    pub planned: bool,
    /// How many writes were planned.
    pub planned_writes: usize,
    /// A plan was made but the program changed what it read (or a target)
    /// since: the commit merged in the pause.
    pub plan_stale: bool,
    /// Objects whose state the pause checked instead of each read.
    pub seen: usize,
}

impl From<&AheadReport> for crate::report::MergeAhead {
    fn from(a: &AheadReport) -> Self {
        crate::report::MergeAhead {
            reused: a.reused,
            stale: a.stale,
            computed_ms: a.computed_ms,
            rebind_entries: a.rebind_entries,
            planned: a.planned,
            planned_writes: a.planned_writes,
            plan_stale: a.plan_stale,
        }
    }
}

/// A read the pairing made: a dict entry (a module's global, a class's own
/// attribute) or a function's code.
enum Read<'py> {
    Entry {
        dict: Bound<'py, PyDict>,
        key: Bound<'py, PyAny>,
        value: Option<Bound<'py, PyAny>>,
    },
    Code {
        function: Bound<'py, PyAny>,
        code: Bound<'py, PyAny>,
    },
}

impl Read<'_> {
    fn unbind(self) -> ReadOwned {
        match self {
            Read::Entry { dict, key, value } => ReadOwned::Entry {
                dict: dict.unbind(),
                key: key.unbind(),
                value: value.map(Bound::unbind),
            },
            Read::Code { function, code } => ReadOwned::Code {
                function: function.unbind(),
                code: code.unbind(),
            },
        }
    }
}

enum ReadOwned {
    Entry {
        dict: Py<PyDict>,
        key: Py<PyAny>,
        value: Option<Py<PyAny>>,
    },
    Code {
        function: Py<PyAny>,
        code: Py<PyAny>,
    },
}

impl ReadOwned {
    fn holds(&self, py: Python<'_>) -> bool {
        match self {
            ReadOwned::Entry { dict, key, value } => {
                let now = dict.bind(py).get_item(key.bind(py)).ok().flatten();
                match (now, value) {
                    (None, None) => true,
                    (Some(now), Some(value)) => now.is(value.bind(py)),
                    _ => false,
                }
            }
            ReadOwned::Code { function, code } => function
                .bind(py)
                .getattr(intern!(py, "__code__"))
                .is_ok_and(|now| now.is(code.bind(py))),
        }
    }
}

/// A global of another module that held an object the merge replaces.
struct RebindEntry {
    importer: String,
    globals: Py<PyDict>,
    key: Py<PyAny>,
    old: Py<PyAny>,
}

/// The references other modules held, when the pairing was made, to the
/// objects the merge will replace (functions whose closure changed shape,
/// a class that became a function): the rebind list, found with the
/// program running so that the commit need not walk `sys.modules`.
#[derive(Default)]
pub struct RebindAhead {
    /// The objects expected to be replaced.
    expected: AddressSet,
    entries: Vec<RebindEntry>,
    /// The modules looked through (kept alive, so their addresses stay
    /// theirs); a module loaded later is looked through in the commit.
    scanned: AddressSet,
    scanned_keepalive: Vec<Py<PyAny>>,
    /// `sys.modules`'s version tag (seen.rs) when it was walked.
    modules_version: Option<u64>,
}

/// The result of a merge whose report is not finished yet.
pub struct Merged {
    reports: Vec<ModuleReport>,
    pending: Pending,
    /// The staged classes whose contents went into a live class: garbage
    /// now (see `retained`).
    replaced_classes: Vec<Py<PyAny>>,
    /// Whether the pairing made ahead of the pause was used.
    pub ahead: AheadReport,
    /// The planned writes, made: their references are dropped with the
    /// report, after the pause, not in it.
    spent: Vec<Planned>,
    /// Functions whose new code differs from theirs only in its lines:
    /// (function, the code it has, the new code). Nothing the program
    /// does can tell the two apart but tracebacks and `inspect`, so they
    /// are given after the pause ([`Merged::take_moved`]), not in it.
    moved: Vec<(Py<PyAny>, Py<PyAny>, Py<PyAny>)>,
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

    /// The code that only moved lines, for the journal to give to its
    /// functions once the world runs again (`Journal::give_moved_code`).
    pub fn take_moved(&mut self) -> Vec<(Py<PyAny>, Py<PyAny>, Py<PyAny>)> {
        std::mem::take(&mut self.moved)
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
    twins: AddressMap<Bound<'py, PyAny>>,
    /// The same, as (new, old), in the order they were made (and keeping
    /// every new one alive).
    twin_pairs: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    /// A staging namespace → the live module dict (to re-home functions).
    globals_map: AddressMap<Bound<'py, PyDict>>,
    /// A staging module object → the live module.
    module_map: AddressMap<Bound<'py, PyAny>>,
    /// Values the live modules already hold: relinking does not descend into
    /// the program's existing data.
    live_values: AddressSet,
    visited: AddressSet,
    /// A visited object -> what relinking made of it, when not itself.
    rebuilt: AddressMap<Bound<'py, PyAny>>,
    /// Keeps every object used as a key alive, so no address is reused.
    keepalive: Vec<Bound<'py, PyAny>>,
    class_pairs: Vec<Pair<'py>>,
    function_pairs: Vec<Pair<'py>>,
    /// (module index, old, replacement): references elsewhere to re-point.
    replaced: Vec<(usize, Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    reports: Vec<ModuleReport>,
    function_type: Bound<'py, PyAny>,
    property_type: Bound<'py, PyAny>,
    /// `enum.EnumType`: an enum's members are its definition (see
    /// `pair_members`).
    /// Enum members that kept their identity: (live member, new member),
    /// whose attributes `patch_class` brings up to date.
    members: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    /// The names of the modules the update reloads, to look up in O(1)
    /// (an update of a thousand modules asks for every object relinked).
    updated: HashSet<&'a str>,
    /// What pairing read from the live program, to tell later whether a
    /// pairing made ahead of the pause still holds (see [`Ahead`]).
    reads: Vec<Read<'py>>,
    /// While merging ahead of the pause: what the merge read of the live
    /// program, to tell in the pause whether it still holds.
    seen: Option<Seen>,
    truncated: bool,
    /// Functions whose code only moved lines: (function, its code now,
    /// the new code), given once the program runs again.
    moved: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    /// (code now, new code) pairs the merge planned ahead found only
    /// moved, so that a merge in the pause (the plan gone stale) need not
    /// compare them again, in Python, while the world is stopped.
    moved_ahead: HashSet<(Key, Key)>,
}

/// What [`Merger::write`] did, before the references to replaced objects
/// are re-pointed.
struct Written<'a, 'py> {
    support: &'a Support<'py>,
    plan: &'a Plan,
    journal: &'a mut Journal,
    replaced: Vec<(usize, Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    truncated: bool,
    seen: Option<Seen>,
    merged: Merged,
}

impl<'a, 'py> Merger<'a, 'py> {
    fn new(
        py: Python<'py>,
        support: &'a Support<'py>,
        plan: &'a Plan,
        staged: &[Py<pyo3::types::PyModule>],
        journal: &'a mut Journal,
        seen: Option<Seen>,
    ) -> PyResult<Self> {
        let builtins = py.import("builtins")?;
        let mut m = Merger {
            py,
            support,
            plan,
            journal,
            live: Vec::new(),
            staged: Vec::new(),
            twins: AddressMap::default(),
            twin_pairs: Vec::new(),
            globals_map: AddressMap::default(),
            module_map: AddressMap::default(),
            live_values: AddressSet::default(),
            visited: AddressSet::default(),
            rebuilt: AddressMap::default(),
            reads: Vec::new(),
            updated: plan.modules.iter().map(|m| m.name.as_str()).collect(),
            keepalive: Vec::new(),
            class_pairs: Vec::new(),
            function_pairs: Vec::new(),
            replaced: Vec::new(),
            reports: Vec::new(),
            // The type of a plain function, without importing `types`: a
            // module the program has not loaded must not appear in it
            // during the commit (the update may be publishing its own).
            function_type: py.eval(c"(lambda: None).__class__", None, None)?.into_any(),
            property_type: builtins.getattr(intern!(builtins.py(), "property"))?,
            members: Vec::new(),
            seen,
            truncated: false,
            moved: Vec::new(),
            moved_ahead: HashSet::new(),
        };
        for (plan_module, staging) in plan.modules.iter().zip(staged) {
            let live_module = plan_module.module.bind(py);
            let live = live_module.dict();
            let staging = staging.bind(py);
            let ns = staging.dict();
            m.note_dict(&live);
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

    /// Takes the pairing made ahead of the pause, which still holds.
    fn adopt(&mut self, ahead: &Ahead) {
        let py = self.py;
        for (new, old) in &ahead.twins {
            self.add_twin(new.bind(py), old.bind(py));
        }
        let bind = |pairs: &[(usize, Py<PyAny>, Py<PyAny>)]| {
            pairs
                .iter()
                .map(|(module, old, new)| Pair {
                    module: *module,
                    old: old.bind(py).clone(),
                    new: new.bind(py).clone(),
                })
                .collect::<Vec<_>>()
        };
        self.class_pairs = bind(&ahead.class_pairs);
        self.function_pairs = bind(&ahead.function_pairs);
        self.members = ahead
            .members
            .iter()
            .map(|(o, n)| (o.bind(py).clone(), n.bind(py).clone()))
            .collect();
        self.moved_ahead = ahead
            .moved
            .iter()
            .map(|(o, n)| (o.as_ptr() as Key, n.as_ptr() as Key))
            .collect();
    }

    fn run(self, rebind: Option<&RebindAhead>) -> Result<Merged, Problem> {
        let py = self.py;
        let mut written = self.write()?;
        rebind_replaced(
            py,
            written.plan,
            written.journal,
            &written.replaced,
            &mut written.merged.reports,
            rebind,
        )
        .map_err(|e| {
            written
                .support
                .problem(py, "could not re-point references to replaced objects", &e)
        })?;
        if written.truncated {
            crate::process::log(format!("pyreload: relinking stopped after {MAX_VISITS} objects; some new objects may still refer to staging copies"));
        }
        Ok(written.merged)
    }

    /// The merge's changes to the program, but for re-pointing references
    /// to replaced objects (which depends on every other module).
    fn write(mut self) -> Result<Written<'a, 'py>, Problem> {
        let py = self.py;
        let err = |e: PyErr| self.support.problem(py, "the commit failed", &e);
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
        let replaced_classes = classes.into_iter().map(|pair| pair.new.unbind()).collect();
        Ok(Written {
            support: self.support,
            plan: self.plan,
            journal: self.journal,
            replaced: self.replaced,
            truncated: self.truncated,
            seen: self.seen,
            merged: Merged {
                reports: self.reports,
                pending,
                replaced_classes,
                ahead: AheadReport::default(),
                spent: Vec::new(),
                moved: self
                    .moved
                    .into_iter()
                    .map(|(f, old, new)| (f.unbind(), old.unbind(), new.unbind()))
                    .collect(),
            },
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
            self.reads.push(Read::Entry {
                dict: self.live[i].clone(),
                key: PyString::new(self.py, &name).into_any(),
                value: old.clone(),
            });
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
        self.note_object(old);
        if !defined_in(old, module) || !defined_in(new, module) || !same_qualname(old, new) {
            return Ok(());
        }
        // Paired already: a class that holds itself, or a class reachable
        // from its own members (`Node.Base = Node`), is paired once.
        if self.twin_of(new).is_some() {
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
            let old_dict = class_dict(old).map_err(|e| self.support.problem(self.py, "could not read a class", &e))?;
            self.note_dict(&old_dict);
            let members = class_entries(new);
            for (key, nv) in members {
                let ov = old_dict.get_item(&key).ok().flatten();
                self.reads.push(Read::Entry {
                    dict: old_dict.clone(),
                    key,
                    value: ov.clone(),
                });
                let Some(ov) = ov else {
                    continue;
                };
                if is_class(&nv) || is_function(&nv) {
                    self.pair(i, module, &ov, &nv)?;
                } else if self.is_wrapper(&nv) && ov.get_type().is(nv.get_type()) {
                    if let (Ok(of), Ok(nf)) = (
                        ov.getattr(intern!(ov.py(), "__func__")),
                        nv.getattr(intern!(nv.py(), "__func__")),
                    ) {
                        self.pair(i, module, &of, &nf)?;
                    }
                }
            }
        } else if is_function(old) && is_function(new) && {
            if let Ok(code) = old.getattr(intern!(self.py, "__code__")) {
                self.reads.push(Read::Code {
                    function: old.clone(),
                    code,
                });
            }
            same_freevars(old, new)
        } {
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
        if let Ok(d) = old_map.cast::<PyDict>() {
            self.note_dict(d);
        }
        let new_map = new_map.cast::<PyDict>()?;
        for (name, nm) in new_map.iter() {
            let Ok(Some(om)) = old_map.get_item(&name).map(Some).or_else(|_| Ok::<_, PyErr>(None)) else {
                continue;
            };
            if self.twin_of(&nm).is_some() {
                continue; // an alias of a member already matched
            }
            let (ov, nv) = (
                om.getattr(intern!(om.py(), "_value_"))?,
                nm.getattr(intern!(nm.py(), "_value_"))?,
            );
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
            let module = meta
                .getattr(intern!(meta.py(), "__module__"))
                .ok()
                .and_then(|m| m.extract::<String>().ok());
            let name = meta
                .getattr(intern!(meta.py(), "__name__"))
                .ok()
                .and_then(|n| n.extract::<String>().ok());
            module.as_deref() == Some("enum") && matches!(name.as_deref(), Some("EnumMeta" | "EnumType"))
        })
    }

    /// Notes a live dict before the merge reads it ahead of the pause.
    fn note_dict(&mut self, dict: &Bound<'py, PyDict>) {
        if let Some(seen) = &mut self.seen {
            seen.dict(dict);
        }
    }

    /// Notes a live function or class (and its dicts) before the merge
    /// reads it ahead of the pause.
    fn note_object(&mut self, obj: &Bound<'py, PyAny>) {
        if let Some(seen) = &mut self.seen {
            seen.object(obj);
        }
    }

    fn add_twin(&mut self, new: &Bound<'py, PyAny>, old: &Bound<'py, PyAny>) {
        self.twins.insert(key(new), old.clone());
        self.twin_pairs.push((new.clone(), old.clone()));
    }

    /// Whether new `a` could stand for old `b` with no one able to tell:
    /// the same object, or `a`'s twin (the live object the merge pairs it
    /// with), or a str, bytes, int, float or bool of the same type and
    /// value, or a tuple or dict of the same type holding such, element
    /// for element (a dict's in the same order: it shows in a signature).
    /// Anything else (a list, an instance) counts by identity: the program
    /// may hold it, or mutate it.
    fn same_data(&self, a: &Bound<'py, PyAny>, b: &Bound<'py, PyAny>) -> PyResult<bool> {
        if a.is(b) || self.twin_of(a).is_some_and(|t| t.is(b)) {
            return Ok(true);
        }
        if !a.get_type().is(b.get_type()) {
            return Ok(false);
        }
        if let (Ok(x), Ok(y)) = (a.cast_exact::<PyTuple>(), b.cast_exact::<PyTuple>()) {
            if x.len() != y.len() {
                return Ok(false);
            }
            for (i, j) in x.iter().zip(y.iter()) {
                if !self.same_data(&i, &j)? {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        if let (Ok(x), Ok(y)) = (a.cast_exact::<PyDict>(), b.cast_exact::<PyDict>()) {
            if x.len() != y.len() {
                return Ok(false);
            }
            for ((k, v), (l, w)) in x.iter().zip(y.iter()) {
                if !self.same_data(&k, &l)? || !self.same_data(&v, &w)? {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        if let Some(same) = self.same_annotation(a, b)? {
            return Ok(same);
        }
        // 0.0 and -0.0 are equal but not the same default; NaN is neither.
        if a.is_exact_instance_of::<pyo3::types::PyFloat>() {
            let (x, y): (f64, f64) = (a.extract()?, b.extract()?);
            return Ok(x.to_bits() == y.to_bits());
        }
        let scalar = a.is_exact_instance_of::<PyString>()
            || a.is_exact_instance_of::<pyo3::types::PyBytes>()
            || a.is_exact_instance_of::<pyo3::types::PyInt>()
            || a.is_exact_instance_of::<pyo3::types::PyBool>();
        Ok(scalar && a.eq(b)?)
    }

    /// [`Merger::same_data`] for what annotations are made of, rebuilt by
    /// every run of a module body (`Optional[Node]`, `list[int]`, a
    /// module's `TypeVar`, `"Node"` as a forward reference): the same
    /// when made of the same parts, twins standing for the new classes.
    /// 116 of a jinja2 upgrade's 649 functions differed only so. None for
    /// anything else; `a` and `b` are of one type.
    fn same_annotation(&self, a: &Bound<'py, PyAny>, b: &Bound<'py, PyAny>) -> PyResult<Option<bool>> {
        let py = self.py;
        let ty = a.get_type();
        let module = ty.module()?;
        if !matches!(module.to_str()?, "typing" | "types") {
            return Ok(None);
        }
        let parts: &[&Bound<'py, PyString>] = if a.hasattr(intern!(py, "__origin__"))? {
            &[
                intern!(py, "__origin__"),
                intern!(py, "__args__"),
                intern!(py, "__metadata__"),
            ]
        } else {
            match ty.name()?.to_str()? {
                "TypeVar" | "ParamSpec" | "TypeVarTuple" => &[
                    intern!(py, "__name__"),
                    intern!(py, "__bound__"),
                    intern!(py, "__constraints__"),
                    intern!(py, "__covariant__"),
                    intern!(py, "__contravariant__"),
                    intern!(py, "__infer_variance__"),
                    intern!(py, "__default__"),
                ],
                // Compares the name and the module it is evaluated in, and
                // the evaluated value by identity.
                "ForwardRef" => return Ok(Some(a.eq(b)?)),
                _ => return Ok(None),
            }
        };
        for part in parts {
            let same = match (a.getattr_opt(*part)?, b.getattr_opt(*part)?) {
                (None, None) => true,
                (Some(x), Some(y)) => self.same_data(&x, &y)?,
                _ => false,
            };
            if !same {
                return Ok(Some(false));
            }
        }
        Ok(Some(true))
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
                } else if !classify::is_code_like(&new) {
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
            } else if classify::is_code_like(&new) {
                // Imported names and modules follow the new source.
                let nv = self.relink(&new)?;
                if !nv.is(&old) {
                    self.journal.set_item(&live, &key_obj, &nv)?;
                }
            } else if classify::is_constant(&new) && classify::is_constant(&old) {
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

        let bases = intern!(self.py, "__bases__");
        let new_bases = self.relink(&new.getattr(bases)?)?;
        if !new_bases.eq(old.getattr(bases)?)? {
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
            let (Ok(od), Ok(nd)) = (
                om.getattr(intern!(om.py(), "__dict__")),
                nm.getattr(intern!(nm.py(), "__dict__")),
            ) else {
                continue;
            };
            let od = od.cast_into::<PyDict>()?;
            self.note_dict(&od);
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
        let old_dict = class_dict(old)?;
        let new_items: Vec<(String, Bound<'py, PyAny>, Bound<'py, PyAny>)> = class_entries(new)
            .into_iter()
            .filter_map(|(k, v)| Some((k.extract::<String>().ok()?, v, k)))
            .collect();
        let new_names: HashSet<String> = new_items.iter().map(|(n, _, _)| n.clone()).collect();
        // The member table first: an enum refuses to set a name that its
        // current table lists.
        let mut new_items = new_items;
        new_items.sort_by_key(|(attr, _, _)| attr != "_member_map_");
        for (attr, nv, attr_key) in new_items {
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
            let Some(ov) = old_dict.get_item(&attr_key)? else {
                let v = self.relink(&nv)?;
                self.journal.set_class_attr(old, &attr, Some(&v))?;
                if classify::is_code_like(&nv) {
                    self.reports[pair.module]
                        .functions
                        .added
                        .push(format!("{class_name}.{attr}"));
                }
                changed = true;
                continue;
            };
            if self.twin_of(&nv).is_some_and(|t| t.is(&ov)) {
                continue;
            }
            if self.is_wrapper(&nv) && ov.get_type().is(nv.get_type()) {
                if let (Ok(of), Ok(nf)) = (
                    ov.getattr(intern!(ov.py(), "__func__")),
                    nv.getattr(intern!(nv.py(), "__func__")),
                ) {
                    // The same function in a fresh wrapper (3.12's enum gives
                    // each class its own `staticmethod` of
                    // `Enum._generate_next_value_`), or the twin of the old one.
                    if nf.is(&of) || self.twin_of(&nf).is_some_and(|t| t.is(&of)) {
                        continue;
                    }
                }
            }
            if classify::is_code_like(&nv) || classify::is_code_like(&ov) {
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
            } else if (definition(&attr) || (classify::is_constant(&nv) && classify::is_constant(&ov)))
                && !same_value(&ov, &nv)
                && !self.same_data(&nv, &ov)?
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
            if classify::is_code_like(&ov) {
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
        if self.journal.is_planning() && old_values.is_some() && class_dict_get(old, "_flag_mask_")?.is_some() {
            // A flag's pseudo-members are read from the table the writes
            // above install, which a plan has not made yet.
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "a flag enum is merged in the pause",
            ));
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
        self.note_object(old);
        let py = self.py;
        let code = intern!(py, "__code__");
        let (old_code, new_code) = (old.getattr(code)?, new.getattr(code)?);
        let mut changed = false;
        // Most functions of a reloaded module are the same code, lines and
        // all: setting it would only cost the pause (a write, its audit
        // event, a journal entry), 649 of them in a jinja2 upgrade. Most
        // of the others only moved (458 of the rest there): they take
        // their new lines after the pause.
        if !same_code_object(&old_code, &new_code)? {
            let moved = if self.journal.is_planning() {
                self.support.moved_code(&old_code, &new_code)?
            } else {
                self.moved_ahead.contains(&(key(&old_code), key(&new_code)))
            };
            if moved {
                self.moved.push((old.clone(), old_code.clone(), new_code.clone()));
            } else {
                self.journal.set_attr_named(old, code, &new_code)?;
            }
        }
        codes.push((old_code.unbind(), new_code.unbind()));
        let attrs = [
            intern!(py, "__defaults__"),
            intern!(py, "__kwdefaults__"),
            intern!(py, "__annotations__"),
            intern!(py, "__doc__"),
        ];
        for (n, attr) in attrs.into_iter().enumerate() {
            // Neither has annotations: reading `__annotations__` would make
            // each an empty dict, only to compare them.
            if n == 2 && !has_annotations(old) && !has_annotations(new) {
                continue;
            }
            let (nv, ov) = (new.getattr(attr)?, old.getattr(attr)?);
            // Two empty annotation dicts say the same: nothing to set.
            if n == 2 && dict_is_empty(&nv) && dict_is_empty(&ov) {
                continue;
            }
            // Docstrings, defaults and annotations rebuilt equal, element
            // for element (in a jinja2 upgrade, 565 annotation dicts and
            // 142 defaults of 649 functions): the old ones stay, and
            // neither the merge nor the relinking of the new ones writes.
            if self.same_data(&nv, &ov)? {
                continue;
            }
            let nv = self.relink(&nv)?;
            if !nv.is(&ov) {
                self.journal.set_attr_named(old, attr, &nv)?;
            }
        }
        let dict = intern!(py, "__dict__");
        let new_dict = new.getattr(dict)?;
        if !dict_is_empty(&new_dict) {
            let old_dict = old.getattr(dict)?.cast_into::<PyDict>()?;
            // What the new function's attributes say, the old one's say
            // already (`functools.wraps`'s `__wrapped__`, a decorator's mark).
            let mut covered = true;
            for (k, v) in new_dict.cast::<PyDict>()?.iter() {
                match old_dict.get_item(&k)? {
                    Some(w) if self.same_data(&v, &w)? => {}
                    _ => {
                        covered = false;
                        break;
                    }
                }
            }
            if !covered {
                let merged = old_dict.copy()?;
                merged.update(self.relink(&new_dict)?.cast::<PyMapping>()?)?;
                self.journal.set_attr_named(old, dict, merged.as_any())?;
            }
        }
        let closure = intern!(py, "__closure__");
        let (old_closure, new_closure) = (old.getattr(closure)?, new.getattr(closure)?);
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

    /// The objects [`Merger::merge_namespace`] will replace, as the live
    /// program stands now: its decision, without making it.
    fn expected_replacements(&self) -> Vec<Bound<'py, PyAny>> {
        let mut out = Vec::new();
        for (i, plan) in self.plan.modules.iter().enumerate() {
            for (key_obj, new) in self.staged[i].iter() {
                let Ok(name) = key_obj.extract::<String>() else {
                    continue;
                };
                if is_module_machinery(&name) || is_module_definition(&name) {
                    continue;
                }
                let Some(old) = self.live[i].get_item(&name).ok().flatten() else {
                    continue;
                };
                if self.twin_of(&new).is_some_and(|t| t.is(&old))
                    || plan.reset.contains(&name)
                    || plan.keep.contains(&name)
                    || plan.transformed.contains(&name)
                {
                    continue;
                }
                if (is_function(&old) || is_class(&old)) && defined_in(&old, &plan.name) {
                    out.push(old);
                }
            }
        }
        out
    }

    /// The rebind list, found ahead of the pause: every global of a module
    /// the update does not reload that holds an object the merge will
    /// replace. One walk of `sys.modules`, with the program running.
    fn rebind_ahead(&self) -> PyResult<RebindAhead> {
        let mut ahead = RebindAhead::default();
        let expected = self.expected_replacements();
        for old in &expected {
            ahead.expected.insert(key(old));
        }
        let updated: HashSet<&str> = self.plan.modules.iter().map(|m| m.name.as_str()).collect();
        // Before the copy: a module loaded while it is walked is looked
        // through in the commit.
        ahead.modules_version = sys_modules_version(self.py);
        let modules = sys_modules(self.py)?;
        for (name, module) in modules.iter() {
            ahead.scanned.insert(key(&module));
            ahead.scanned_keepalive.push(module.clone().unbind());
            if expected.is_empty() {
                continue;
            }
            let name: String = name.extract().unwrap_or_default();
            if updated.contains(name.as_str()) {
                continue;
            }
            let Some(dict) = module_dict(&module) else { continue };
            for (k, v) in dict.iter() {
                if ahead.expected.contains(&key(&v)) {
                    ahead.entries.push(RebindEntry {
                        importer: name.clone(),
                        globals: dict.clone().unbind(),
                        key: k.unbind(),
                        old: v.unbind(),
                    });
                }
            }
        }
        Ok(ahead)
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

    /// [`Merger::relink_at`] for an object relinked already gives what it
    /// gave then: a tuple or wrapper rebuilt around relinked contents is
    /// the same rebuilt object wherever the update refers to the original
    /// (the original still refers to staging), whether the first relinking
    /// was made in the pause or planned ahead of it.
    fn relink_at(&mut self, obj: &Bound<'py, PyAny>, depth: usize) -> PyResult<Bound<'py, PyAny>> {
        let k = key(obj);
        if let Some(r) = self.rebuilt.get(&k) {
            return Ok(r.clone());
        }
        let r = self.relink_fresh(obj, depth)?;
        if !r.is(obj) && self.visited.contains(&k) {
            self.rebuilt.insert(k, r.clone());
        }
        Ok(r)
    }

    fn relink_fresh(&mut self, obj: &Bound<'py, PyAny>, depth: usize) -> PyResult<Bound<'py, PyAny>> {
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
            let globals = obj.getattr(intern!(obj.py(), "__globals__"))?;
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
            let f = obj.getattr(intern!(obj.py(), "__func__"))?;
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
            let doc = obj.getattr(intern!(obj.py(), "__doc__"))?;
            return self.rebuild_property(obj, &parts, &doc);
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
            if let Ok(Some(d)) = obj.getattr_opt(intern!(obj.py(), "__dict__")) {
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
            f.getattr(intern!(f.py(), "__code__"))?,
            live,
            f.getattr(intern!(f.py(), "__name__"))?,
            self.py.None(),
            f.getattr(intern!(f.py(), "__closure__"))?,
        ))?;
        self.add_twin(f, &rehomed);
        let py = self.py;
        for attr in [
            intern!(py, "__qualname__"),
            intern!(py, "__module__"),
            intern!(py, "__doc__"),
            intern!(py, "__annotations__"),
        ] {
            rehomed.setattr(attr, f.getattr(attr)?)?;
        }
        for attr in [intern!(py, "__defaults__"), intern!(py, "__kwdefaults__")] {
            let v = f.getattr(attr)?;
            if !v.is_none() {
                rehomed.setattr(attr, self.relink_at(&v, depth + 1)?)?;
            }
        }
        let d = f.getattr(intern!(f.py(), "__dict__"))?;
        if d.len()? > 0 {
            rehomed.setattr(intern!(rehomed.py(), "__dict__"), self.relink_at(&d, depth + 1)?)?;
        }
        if let Ok(closure) = f.getattr(intern!(f.py(), "__closure__"))?.cast_into::<PyTuple>() {
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

    /// The same property with relinked accessors. A subclass of
    /// `property` may take other arguments (werkzeug's `cached_property`
    /// takes `fget, name, doc`): it is made as `property` makes itself,
    /// with the instance's own attributes copied over.
    fn rebuild_property(
        &self,
        obj: &Bound<'py, PyAny>,
        parts: &[Bound<'py, PyAny>],
        doc: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let class = obj.get_type();
        if class.is(&self.property_type) {
            return class.call1((&parts[0], &parts[1], &parts[2], doc));
        }
        let py = self.py;
        let new = self.property_type.call_method1(intern!(py, "__new__"), (&class,))?;
        self.property_type
            .getattr(intern!(py, "__init__"))?
            .call1((&new, &parts[0], &parts[1], &parts[2], doc))?;
        if let (Ok(Some(from)), Ok(Some(to))) = (
            obj.getattr_opt(intern!(py, "__dict__")),
            new.getattr_opt(intern!(py, "__dict__")),
        ) {
            to.call_method1(intern!(py, "update"), (from,))?;
        }
        Ok(new)
    }

    fn is_staged_definition(&self, class: &Bound<'py, PyAny>) -> bool {
        let Ok(module) = class
            .getattr(intern!(class.py(), "__module__"))
            .and_then(|m| m.extract::<String>())
        else {
            return false;
        };
        self.updated.contains(module.as_str())
            && self.twin_of(class).is_none()
            && !self.live_values.contains(&key(class))
    }

    fn is_wrapper(&self, obj: &Bound<'py, PyAny>) -> bool {
        // SAFETY: type checks against two static types, as isinstance.
        unsafe {
            pyo3::ffi::PyObject_TypeCheck(obj.as_ptr(), &raw mut pyo3::ffi::PyStaticMethod_Type) != 0
                || pyo3::ffi::PyObject_TypeCheck(obj.as_ptr(), &raw mut pyo3::ffi::PyClassMethod_Type) != 0
        }
    }

    /// `__slots__` members and `__dict__`/`__weakref__` accessors are tied to
    /// the class that created them and must stay the live class's own.
    fn is_slot_descriptor(&self, obj: &Bound<'py, PyAny>) -> bool {
        // SAFETY: comparing the object's type pointer with two static types.
        unsafe {
            let ty = pyo3::ffi::Py_TYPE(obj.as_ptr());
            ty == &raw mut pyo3::ffi::PyMemberDescr_Type || ty == &raw mut pyo3::ffi::PyGetSetDescr_Type
        }
    }
}

/// Points every reference that other modules hold to a replaced object
/// at its replacement (the `from m import f` copies). With a rebind
/// list found ahead ([`RebindAhead`]) that expected every replacement
/// made, only its entries are checked (each still holding the old
/// object: one the program rebound since keeps its own), and only the
/// modules loaded since are looked through; otherwise every module is.
fn rebind_replaced<'py>(
    py: Python<'py>,
    plan: &Plan,
    journal: &mut Journal,
    replaced: &[(usize, Bound<'py, PyAny>, Bound<'py, PyAny>)],
    reports: &mut [ModuleReport],
    ahead: Option<&RebindAhead>,
) -> PyResult<()> {
    if replaced.is_empty() {
        return Ok(());
    }
    let targets: AddressMap<(usize, Bound<'py, PyAny>)> = replaced
        .iter()
        .map(|(i, old, new)| (key(old), (*i, new.clone())))
        .collect();
    let ahead = ahead.filter(|a| targets.keys().all(|k| a.expected.contains(k)));
    // Only a module loaded since staging needs this: made for the first.
    let mut updated: Option<HashSet<&str>> = None;
    if let Some(ahead) = ahead {
        for entry in &ahead.entries {
            let name = &entry.importer;
            let (dict, k, old) = (entry.globals.bind(py), entry.key.bind(py), entry.old.bind(py));
            let Some((i, new)) = targets.get(&key(old)) else {
                continue;
            };
            if !dict.get_item(k)?.is_some_and(|held| held.is(old)) {
                continue; // rebound by the program since
            }
            journal.set_item(dict, k, new)?;
            let attr: String = k.extract().unwrap_or_default();
            reports[*i].rebound.push(format!("{name}.{attr}"));
        }
    }
    // `sys.modules` unchanged since the walk made ahead: no module was
    // loaded since, and none of the program's modules need looking at
    // here (the pause does not grow with the modules the update leaves).
    if ahead.is_some_and(|a| a.modules_version.is_some() && a.modules_version == sys_modules_version(py)) {
        return Ok(());
    }
    let modules = sys_modules(py)?;
    for (name, module) in modules.iter() {
        if ahead.is_some_and(|a| a.scanned.contains(&key(&module))) {
            continue;
        }
        let name: String = name.extract().unwrap_or_default();
        if updated
            .get_or_insert_with(|| plan.modules.iter().map(|m| m.name.as_str()).collect())
            .contains(name.as_str())
        {
            continue;
        }
        let Some(dict) = module_dict(&module) else { continue };
        let items: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = dict.iter().collect();
        for (k, v) in items {
            if let Some((i, new)) = targets.get(&key(&v)) {
                journal.set_item(&dict, &k, new)?;
                let attr: String = k.extract().unwrap_or_default();
                reports[*i].rebound.push(format!("{name}.{attr}"));
            }
        }
    }
    Ok(())
}

use pyo3::types::PyMapping;

/// The same object, or an equal value of the same type (so `1` and `True`
/// differ, as do `1` and `1.0`).
/// Two code objects that no one could tell apart: equal by CPython's own
/// comparison (bytecode, constants, names, first line), with the same
/// line table (which 3.10's comparison leaves out), file and qualified
/// name (which every version's does, and tracebacks show), and so for
/// every code object nested in their constants.
fn same_code_object(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<bool> {
    if a.is(b) {
        return Ok(true);
    }
    if !a.eq(b)? {
        return Ok(false);
    }
    let py = a.py();
    for attr in [
        intern!(py, "co_filename"),
        intern!(py, "co_qualname"),
        intern!(py, "co_linetable"),
    ] {
        match (a.getattr_opt(attr)?, b.getattr_opt(attr)?) {
            (Some(x), Some(y)) if same_value(&x, &y) => {}
            (None, None) => {}
            _ => return Ok(false),
        }
    }
    let consts = intern!(py, "co_consts");
    let (ca, cb) = (a.getattr(consts)?, b.getattr(consts)?);
    for (x, y) in ca.try_iter()?.zip(cb.try_iter()?) {
        let (x, y) = (x?, y?);
        if x.get_type().is(a.get_type()) && !same_code_object(&x, &y)? {
            return Ok(false);
        }
    }
    Ok(true)
}

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
        && obj.getattr(intern!(obj.py(), "__module__")).is_ok_and(|m| {
            m.cast::<PyString>()
                .is_ok_and(|m| m.to_str().is_ok_and(|m| m == module))
        })
}

fn qualname(obj: &Bound<'_, PyAny>) -> String {
    obj.getattr(intern!(obj.py(), "__qualname__"))
        .and_then(|q| q.extract())
        .unwrap_or_else(|_| "?".to_string())
}

/// The same qualified name, compared without copying either.
fn same_qualname(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> bool {
    let name = intern!(a.py(), "__qualname__");
    match (a.getattr(name), b.getattr(name)) {
        (Ok(x), Ok(y)) => x.is(&y) || x.eq(&y).unwrap_or(false),
        (Err(_), Err(_)) => true,
        _ => false,
    }
}

/// The version tag of `sys.modules` itself (see seen.rs), or None if it is
/// missing.
fn sys_modules_version(py: Python<'_>) -> Option<u64> {
    // SAFETY: as in `sys_modules`: borrowed or NULL, no import.
    let modules = unsafe { pyo3::ffi::PySys_GetObject(c"modules".as_ptr()) };
    if modules.is_null() {
        return None;
    }
    let modules = unsafe { Bound::from_borrowed_ptr(py, modules) };
    modules.cast::<PyDict>().ok().map(super::seen::dict_version)
}

/// A copy of `sys.modules`, to look through while changing modules.
fn sys_modules(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    // SAFETY: with the GIL held, `PySys_GetObject` returns `sys.modules`
    // borrowed, or NULL (without an exception) if it is gone; no import
    // machinery runs, unlike `import sys`.
    let modules = unsafe { pyo3::ffi::PySys_GetObject(c"modules".as_ptr()) };
    if modules.is_null() {
        return Err(pyo3::exceptions::PyRuntimeError::new_err("sys.modules is missing"));
    }
    unsafe { Bound::from_borrowed_ptr(py, modules) }
        .cast_into::<PyDict>()?
        .copy()
}

/// A module's namespace, if it has a real one.
fn module_dict<'py>(module: &Bound<'py, PyAny>) -> Option<Bound<'py, PyDict>> {
    module
        .getattr_opt(intern!(module.py(), "__dict__"))
        .ok()
        .flatten()?
        .cast_into::<PyDict>()
        .ok()
}

/// A function's `__code__` can only be replaced by code with the same free
/// variables, because the closure cells stay.
fn same_freevars(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> bool {
    fn freevars<'py>(f: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        f.getattr(intern!(f.py(), "__code__"))?
            .getattr(intern!(f.py(), "co_freevars"))
    }
    match (freevars(a), freevars(b)) {
        (Ok(x), Ok(y)) => x.eq(y).unwrap_or(false),
        _ => false,
    }
}

fn cell_contents<'py>(cell: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    cell.getattr(intern!(cell.py(), "cell_contents")).ok()
}

/// A function with annotations of its own (not the empty dict CPython
/// makes when `__annotations__` is first read).
fn has_annotations(f: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `f` is a function (checked by the callers' pairing); the
    // result is borrowed, NULL when it has none.
    let annotations = unsafe { pyo3::ffi::PyFunction_GetAnnotations(f.as_ptr()) };
    !annotations.is_null()
        && unsafe { Bound::from_borrowed_ptr(f.py(), annotations) }
            .cast::<PyDict>()
            .is_ok_and(|d| !d.is_empty())
}

/// An exact dict with nothing in it.
fn dict_is_empty(obj: &Bound<'_, PyAny>) -> bool {
    obj.cast_exact::<PyDict>().is_ok_and(|d| d.is_empty())
}

/// A class's own namespace, as (key, raw value) pairs: the keys are the
/// dict's own `str` objects, whose hashes are cached, for looking the same
/// name up in another class.
fn class_entries<'py>(class: &Bound<'py, PyAny>) -> Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    class_dict(class).map(|d| d.iter().collect()).unwrap_or_default()
}

/// A class's own namespace, as (name, raw value) pairs.
fn class_items<'py>(class: &Bound<'py, PyAny>) -> Vec<(String, Bound<'py, PyAny>)> {
    let Ok(dict) = class_dict(class) else {
        return Vec::new();
    };
    dict.iter()
        .filter_map(|(k, v)| Some((k.extract::<String>().ok()?, v)))
        .collect()
}
