//! State transformers: converting live data to the new version's
//! representation, inside the commit window, after the merge.
//!
//! A class transform finds the class's live instances (and its
//! subclasses') with one walk of the collector's objects, timed apart from
//! the conversion. It runs `defaults` and the transformer once per
//! instance, saving each instance's state into the journal first. A global
//! transform calls its transformer with the old value and binds the result.
//! Transformers are looked up after the merge, so they are the new
//! version's. A lazy class transform converts only a sample here and
//! installs hooks that convert the rest on first use; [`sweep`] finishes it
//! after the pause.

use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use super::journal::Journal;
use super::support::Support;
use crate::diagnostic::Problem;
use crate::plan::{Plan, TransformPlan, TransformTarget};
use crate::report::{LazyReport, TransformReport};
use crate::spec::Mode;

/// A lazy migration installed by the commit, to finish once the world runs
/// again.
pub struct PendingLazy {
    /// Index of its report in the update's `transforms`.
    pub report: usize,
    migration: Py<PyAny>,
    class: Py<PyAny>,
    /// The class's own entries the hooks replaced (None: it had none).
    replaced: Vec<(String, Option<Py<PyAny>>)>,
}

/// Runs every transform in spec order. On error the journal holds what was
/// already converted; the caller rolls it back. Lazy class transforms only
/// install their hooks here; they are returned to be swept after the pause.
pub fn run(
    py: Python<'_>,
    support: &Support<'_>,
    plan: &Plan,
    update: &str,
    samples: &[Option<Py<PyList>>],
    journal: &mut Journal,
) -> Result<(Vec<TransformReport>, Vec<PendingLazy>), Problem> {
    let mut reports = Vec::new();
    let mut lazies = Vec::new();
    for (i, t) in plan.transforms.iter().enumerate() {
        if let Some(Some(sample)) = samples.get(i) {
            let (report, lazy) = install_lazy(py, support, t, update, reports.len(), sample.bind(py), journal)?;
            reports.push(report);
            lazies.push(lazy);
        } else {
            reports.push(run_one(py, support, t, journal)?);
        }
    }
    Ok((reports, lazies))
}

/// The defaults of a transform as the helpers take them.
fn defaults_list<'py>(py: Python<'py>, t: &TransformPlan) -> PyResult<Bound<'py, PyList>> {
    let defaults = PyList::empty(py);
    for (name, code, globals) in &t.defaults {
        defaults.append(PyTuple::new(
            py,
            [
                PyString::new(py, name).into_any(),
                code.bind(py).clone(),
                globals.bind(py).clone(),
            ],
        )?)?;
    }
    Ok(defaults)
}

/// How many live instances a lazy migration converts in the commit, as a
/// sample that proves the transformer works on real data.
pub const LAZY_SAMPLE: usize = 32;

/// Before the pause, with the program running: up to [`LAZY_SAMPLE`] live
/// instances of each lazily transformed class, by transform index.
pub fn lazy_samples(py: Python<'_>, support: &Support<'_>, plan: &Plan) -> Result<Vec<Option<Py<PyList>>>, Problem> {
    plan.transforms
        .iter()
        .map(|t| {
            if t.mode == Mode::Lazy {
                // Made once per process, here rather than in the pause.
                super::lazy::hook_type(py)
                    .map_err(|e| support.problem(py, "could not make the lazy migration's hooks", &e))?;
            }
            if t.mode != Mode::Lazy || !matches!(t.target, TransformTarget::Class) {
                return Ok(None);
            }
            let sample = support
                .resolve(&t.path)
                .and_then(|class| support.instances_of(&class))
                .and_then(|all| all.get_slice(0, LAZY_SAMPLE).cast_into::<PyList>().map_err(PyErr::from))
                .map_err(|e| support.problem(py, &format!("could not find instances of `{}`", t.path), &e))?;
            Ok(Some(sample.unbind()))
        })
        .collect()
}

fn install_lazy(
    py: Python<'_>,
    support: &Support<'_>,
    t: &TransformPlan,
    update: &str,
    index: usize,
    sample: &Bound<'_, PyList>,
    journal: &mut Journal,
) -> Result<(TransformReport, PendingLazy), Problem> {
    let fail = |e: PyErr| support.problem(py, &format!("could not install the lazy migration of `{}`", t.path), &e);
    let class = support.resolve(&t.path).map_err(fail)?;
    let function = match &t.function {
        Some(path) => support.resolve(path).map_err(fail)?,
        None => py.None().into_bound(py),
    };
    let defaults = defaults_list(py, t).map_err(fail)?;
    let migration = support
        .lazy_migration(&class, defaults.as_any(), &function, update)
        .map_err(fail)?;
    let hooks = migration.call_method0("hooks").map_err(fail)?;
    let mut replaced = Vec::new();
    for item in hooks.call_method0("items").and_then(|i| i.try_iter()).map_err(fail)? {
        let (name, value): (String, Bound<'_, PyAny>) = item.and_then(|i| i.extract()).map_err(fail)?;
        replaced.push((
            name.clone(),
            super::journal::class_dict_get(&class, &name).map_err(fail)?,
        ));
        journal.set_class_attr(&class, &name, Some(&value)).map_err(fail)?;
    }
    let saved = journal.states(py);
    migration
        .call_method1("convert_sample", (&saved, sample))
        .map_err(|e| {
            let mut p = support.problem(
                py,
                &format!(
                    "the lazy transformer for `{}` failed on instance {} of a sample of {}; the update was rolled back",
                    t.path,
                    saved.len(),
                    sample.len()
                ),
                &e,
            );
            if let (None, Some(location)) = (&p.location, &t.location) {
                p.location = Some(Box::new(location.clone()));
            }
            p
        })?;
    let report = TransformReport {
        target: t.path.clone(),
        kind: "class".into(),
        instances: sample.len(),
        lazy: Some(LazyReport::default()),
        ..TransformReport::default()
    };
    Ok((
        report,
        PendingLazy {
            report: index,
            migration: migration.unbind(),
            class: class.unbind(),
            replaced,
        },
    ))
}

/// After the pause, with the program running: converts the instances not
/// used yet, in batches, releasing the GIL between batches, then removes the
/// hooks. Instances whose transformer raises keep their old state, and the
/// hooks stay, so that using them keeps raising rather than misbehaving.
///
/// Each batch must finish within `batch_timeout` (the spec's
/// `commit_timeout_ms`), or the transformer is interrupted (see
/// [`super::watchdog`]) and the sweep ends with an error.
pub fn sweep(
    py: Python<'_>,
    pending: PendingLazy,
    report: &mut TransformReport,
    batch_timeout: Duration,
) -> PyResult<()> {
    const BATCH: usize = 1000;
    let t0 = Instant::now();
    let migration = pending.migration.bind(py);
    let support = Support::load(py)?;
    let mut swept = super::sweep::Sweep::start(&support, migration)?;
    let find_ms = ms(t0);
    report.instances += swept.pending();
    let mut all = || -> PyResult<()> {
        loop {
            let left = {
                let _deadline = super::watchdog::Deadline::arm(py, Instant::now() + batch_timeout);
                swept.batch(&support, BATCH)?
            };
            if left == 0 {
                return Ok(());
            }
            py.detach(std::thread::yield_now);
        }
    };
    let swept_all = all();
    let failures: Vec<String> = migration.getattr("failures")?.extract()?;
    // A sweep that stopped early leaves the hooks on, as a failed instance
    // does; either way its queue goes, so the marks must not need it.
    swept.end(swept_all.is_err() || !failures.is_empty())?;
    swept_all?;
    if failures.is_empty() {
        let class = pending.class.bind(py);
        for (name, old) in pending.replaced {
            match old {
                Some(old) => class.setattr(name.as_str(), old)?,
                None => super::journal::remove_class_attr(class, &name)?,
            }
        }
        migration
            .getattr("table")?
            .cast_into::<super::lazy::LazyTable>()?
            .get()
            .marks()
            .clear();
    }
    drop(swept);
    report.lazy = Some(LazyReport {
        converted_in_commit: migration.getattr("in_commit")?.extract()?,
        converted_on_use: migration.getattr("on_use")?.extract()?,
        converted_by_sweep: migration.getattr("by_sweep")?.extract()?,
        failures,
        sweep_ms: ms(t0),
        sweep_find_ms: find_ms,
    });
    Ok(())
}

pub fn run_one(
    py: Python<'_>,
    support: &Support<'_>,
    t: &TransformPlan,
    journal: &mut Journal,
) -> Result<TransformReport, Problem> {
    let located = |mut p: Problem| {
        if let (None, Some(location)) = (&p.location, &t.location) {
            p.location = Some(Box::new(location.clone()));
            p.label = Some("this transform".into());
        }
        p
    };
    let function = match &t.function {
        Some(path) => Some(support.resolve(path).map_err(|e| {
            located(support.problem(
                py,
                &format!("transformer `{path}` was not found in the updated program"),
                &e,
            ))
        })?),
        None => None,
    };
    let mut report = TransformReport {
        target: t.path.clone(),
        ..TransformReport::default()
    };
    match &t.target {
        TransformTarget::Global { module, name } => {
            report.kind = "global".into();
            let dict = support
                .resolve(module)
                .and_then(|m| Ok(m.getattr("__dict__")?.cast_into::<pyo3::types::PyDict>()?))
                .map_err(|e| located(support.problem(py, &format!("module `{module}` is not loaded"), &e)))?;
            let old = dict.get_item(name).ok().flatten().ok_or_else(|| {
                located(Problem::new(format!(
                    "global `{}` does not exist in the updated program",
                    t.path
                )))
            })?;
            let t0 = Instant::now();
            let function = function.expect("validated: a global transform has a function");
            let new = function.call1((old,)).map_err(|e| {
                located(support.problem(
                    py,
                    &format!(
                        "transformer `{}` raised on global `{}`",
                        t.function.as_deref().unwrap_or_default(),
                        t.path
                    ),
                    &e,
                ))
            })?;
            journal
                .set_data_item(&dict, &pyo3::types::PyString::new(py, name).into_any(), &new)
                .map_err(|e| located(support.problem(py, "could not bind the converted global", &e)))?;
            report.instances = 1;
            report.convert_ms = ms(t0);
        }
        TransformTarget::Class => {
            report.kind = "class".into();
            let class = support.resolve(&t.path).map_err(|e| {
                located(support.problem(
                    py,
                    &format!("class `{}` was not found in the updated program", t.path),
                    &e,
                ))
            })?;
            let t0 = Instant::now();
            let instances = support.instances_of(&class).map_err(|e| {
                located(support.problem(py, &format!("could not find the instances of `{}`", t.path), &e))
            })?;
            report.find_ms = ms(t0);
            report.instances = instances.len();
            let defaults =
                defaults_list(py, t).map_err(|e| support.problem(py, "could not prepare the defaults", &e))?;
            let saved = journal.instance_states(&instances);
            let t1 = Instant::now();
            super::eager::convert_all(support, &saved, &instances, &defaults, function.as_ref()).map_err(|e| {
                let failed_at = saved.len();
                located(support.problem(
                    py,
                    &format!(
                        "converting `{}` failed on instance {failed_at} of {}; every converted instance was restored",
                        t.path,
                        instances.len()
                    ),
                    &e,
                ))
            })?;
            report.convert_ms = ms(t1);
        }
    }
    Ok(report)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
