//! State transformers: converting live data to the new version's
//! representation, inside the commit window, after the merge.
//!
//! A class transform finds the class's live instances (and its
//! subclasses') with one walk of the collector's objects, timed apart from
//! the conversion. It runs `defaults` and the transformer once per
//! instance, saving each instance's state into the journal first. A global
//! transform calls its transformer with the old value and binds the result.
//! Transformers are looked up after the merge, so they are the new
//! version's.

use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use super::journal::Journal;
use super::support::Support;
use crate::diagnostic::Problem;
use crate::plan::{Plan, TransformPlan, TransformTarget};
use crate::report::TransformReport;

/// Runs every transform in spec order. On error the journal holds what was
/// already converted; the caller rolls it back.
pub fn run(
    py: Python<'_>,
    support: &Support<'_>,
    plan: &Plan,
    journal: &mut Journal,
) -> Result<Vec<TransformReport>, Problem> {
    plan.transforms
        .iter()
        .map(|t| run_one(py, support, t, journal))
        .collect()
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
            let defaults = PyList::empty(py);
            for (name, code, globals) in &t.defaults {
                let item = PyTuple::new(
                    py,
                    [
                        name.into_pyobject(py).unwrap().into_any(),
                        code.bind(py).clone(),
                        globals.bind(py).clone(),
                    ],
                )
                .map_err(|e| Problem::new(e.to_string()))?;
                defaults.append(item).map_err(|e| Problem::new(e.to_string()))?;
            }
            let saved = journal.states(py);
            let t1 = Instant::now();
            let none = py.None().into_bound(py);
            support
                .convert_all(&saved, instances.as_any(), defaults.as_any(), function.as_ref().unwrap_or(&none))
                .map_err(|e| {
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
