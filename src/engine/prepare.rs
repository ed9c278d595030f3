//! Prepare: resolve a spec against the running program without changing it.
//!
//! Files are read with the GIL released; only compiling and looking things
//! up in the interpreter hold it. Any problem here refuses the update before
//! the program has been touched. Modules imported on the way (transformers,
//! submodules an expression names) are staged, not left in `sys.modules`:
//! see [`super::imports`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyModule, PySet};
use toml::Spanned;

use super::imports;
use super::support::Support;
use crate::diagnostic::{Location, Problem};
use crate::plan::{Expression, Imports, ModulePlan, Plan, TransformPlan, TransformTarget};
use crate::process::state::ProcessState;
use crate::spec::{did_you_mean, Spec, SpecSource};

pub fn prepare(
    py: Python<'_>,
    support: &Support<'_>,
    state: &ProcessState,
    source: &SpecSource,
    spec: &Spec,
) -> Result<Plan, Problem> {
    // Whatever resolving imports is staged, and withdrawn before the
    // program sees it (see `imports`), on every way out.
    let imports = imports::begin(py, support)?;
    let plan = resolve(py, support, state, source, spec, &imports);
    let withdrawn = imports::end(py, support, &imports);
    let mut plan = plan?;
    withdrawn?;
    plan.imports = imports;
    Ok(plan)
}

fn resolve(
    py: Python<'_>,
    support: &Support<'_>,
    state: &ProcessState,
    source: &SpecSource,
    spec: &Spec,
    imports: &Imports,
) -> Result<Plan, Problem> {
    check_program(state, source, spec)?;
    check_version(state, source, spec)?;

    let sys_modules = py
        .import("sys")
        .and_then(|sys| sys.getattr("modules"))
        .and_then(|m| Ok(m.cast_into::<PyDict>()?))
        .map_err(|e| support.problem(py, "could not read sys.modules", &e))?;

    // Find each module and the file its new source comes from.
    let spec_dir = Path::new(&source.path)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut located = Vec::new();
    // New modules listed so far: a new package's own new submodules may
    // follow it in the spec (the commit adds them in this order).
    let mut new_so_far: Vec<&str> = Vec::new();
    for reload in &spec.reload {
        let name = reload.module.get_ref();
        let explicit = match &reload.source {
            Some(s) => {
                let p = spec_dir.join(s.get_ref());
                match p.canonicalize() {
                    Ok(p) if p.is_file() => Some(p),
                    _ => {
                        return Err(source
                            .problem(
                                s.span(),
                                format!("source file {} does not exist", p.display()),
                                "no such file",
                            )
                            .with_help("`source` is relative to the directory of the spec file"))
                    }
                }
            }
            None => None,
        };
        let module = match (&explicit, reload.new) {
            (Some(path), true) => {
                let module = new_module(py, support, &sys_modules, &new_so_far, source, &reload.module, path)?;
                new_so_far.push(reload.module.get_ref());
                module
            }
            _ => find_module(py, support, &sys_modules, source, &reload.module)?,
        };
        let path = match explicit {
            Some(p) => p,
            None => match support
                .module_source(module.as_any())
                .map_err(|e| support.problem(py, "could not locate source", &e))?
            {
                Some(p) => PathBuf::from(p),
                None => {
                    return Err(source
                        .problem(
                            reload.module.span(),
                            format!("module `{name}` has no Python source to reload"),
                            "built-in, extension or bytecode-only module",
                        )
                        .with_help("give the new source explicitly with `source = \"path/to/module.py\"`"))
                }
            },
        };
        located.push((reload, module.unbind(), path));
    }

    // Read every new source with the GIL released: other threads keep running.
    let texts: Vec<Result<String, std::io::Error>> =
        py.detach(|| located.iter().map(|(_, _, p)| std::fs::read_to_string(p)).collect());

    let builtins = py
        .import("builtins")
        .map_err(|e| support.problem(py, "could not import builtins", &e))?;
    let mut modules = Vec::new();
    for ((reload, module, path), text) in located.into_iter().zip(texts) {
        let path_str = path.display().to_string();
        let text = text.map_err(|e| {
            source.problem(
                reload.module.span(),
                format!(
                    "could not read the new source of `{}` at {path_str}: {e}",
                    reload.module.get_ref()
                ),
                "source unreadable",
            )
        })?;
        let code = builtins
            .getattr("compile")
            .and_then(|compile| compile.call1((text.as_str(), path_str.as_str(), "exec", 0, true)))
            .map_err(|e| {
                let mut p = support.problem(
                    py,
                    &format!("the new source of `{}` does not compile", reload.module.get_ref()),
                    &e,
                );
                if p.location.is_none() {
                    p.location = Some(Box::new(Location::in_text(
                        &source.path,
                        &source.text,
                        reload.module.span(),
                    )));
                }
                p.causes.clear();
                p
            })?;
        imports::ran(py, support, imports, &path_str, &text)?;
        check_reset_names(source, reload, &code)?;
        modules.push(ModulePlan {
            name: reload.module.get_ref().clone(),
            module: module
                .bind(py)
                .clone()
                .cast_into::<PyModule>()
                .map_err(|e| Problem::new(e.to_string()))?
                .unbind(),
            source: path_str,
            text,
            code: code.unbind(),
            keep: reload.keep.iter().map(|k| k.get_ref().clone()).collect::<BTreeSet<_>>(),
            reset: reload
                .reset
                .iter()
                .map(|k| k.get_ref().clone())
                .collect::<BTreeSet<_>>(),
            new: reload.new,
            transformed: spec
                .transform
                .iter()
                .filter_map(|t| t.global.as_ref()?.get_ref().rsplit_once('.'))
                .filter(|(module, _)| *module == reload.module.get_ref().as_str())
                .map(|(_, name)| name.to_string())
                .collect(),
        });
    }

    check_reload_order(py, support, source, spec, &modules)?;
    let inactive = inactive_set(py, support, source, spec, &sys_modules, &modules)?;
    let fail = |e: PyErr| Problem::new(format!("could not build the safe-point check: {e}"));
    let inactive_code_ids = PySet::empty(py).map_err(fail)?;
    let generator_codes = PyList::empty(py);
    for (_, code) in &inactive {
        inactive_code_ids
            .add(builtins.getattr("id").and_then(|id| id.call1((code,))).map_err(fail)?)
            .map_err(fail)?;
        if support.is_generator_code(code).map_err(fail)? {
            generator_codes.append(code).map_err(fail)?;
        }
    }
    let expression = |expr: &Option<Spanned<String>>, what: &str| -> Result<Option<Expression>, Problem> {
        expr.as_ref()
            .map(|e| compile_expression(py, support, source, e, what))
            .transpose()
    };

    let transforms = transforms(py, support, source, spec, &sys_modules, &modules)?;
    let (copies, stars) = super::copies::find(py, support, &modules)?;
    Ok(Plan {
        to: spec.update.to.get_ref().clone(),
        modules,
        inactive: inactive.into_iter().map(|(name, _)| name).collect(),
        inactive_code_ids: inactive_code_ids.unbind(),
        generator_codes: generator_codes.unbind(),
        condition: expression(&spec.safe_point.condition, "[safe_point] condition")?,
        update_point: spec.safe_point.update_point.as_ref().map(|p| p.get_ref().clone()),
        after: expression(&spec.check.after, "[check] after")?,
        transforms,
        timeout: Duration::from_millis(spec.safe_point.timeout_ms()),
        commit_timeout: Duration::from_millis(spec.safe_point.commit_timeout_ms()),
        run_alone: Duration::from_micros(spec.safe_point.run_alone_us()),
        imports: Imports::default(),
        copies,
        stars,
    })
}

/// A module's new body runs while staging, and `from B import x` in it sees
/// the staged B only if B was staged first. So a module must come after
/// every updated module it imports from. A wrong order is refused with the
/// order that follows the imports.
fn check_reload_order(
    py: Python<'_>,
    support: &Support<'_>,
    source: &SpecSource,
    spec: &Spec,
    modules: &[ModulePlan],
) -> Result<(), Problem> {
    let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    let mut imports: Vec<Vec<usize>> = Vec::new();
    for m in modules {
        let module = m.module.bind(py);
        let is_package = module.hasattr("__path__").unwrap_or(false);
        let package = if is_package {
            m.name.clone()
        } else {
            m.name.rsplit_once('.').map(|(p, _)| p.to_string()).unwrap_or_default()
        };
        let imported = support
            .imported_modules(m.code.bind(py), &package)
            .map_err(|e| support.problem(py, &format!("could not read the imports of `{}`", m.name), &e))?;
        imports.push(
            imported
                .iter()
                .filter_map(|i| names.iter().position(|n| n == i))
                .filter(|&j| names[j] != m.name)
                // A submodule that imports from its own package (`from .
                // import nodes`) reads the package the program has: the
                // package's reload, which imports its submodules, comes
                // after theirs.
                .filter(|&j| !is_ancestor(names[j], &m.name))
                .collect(),
        );
    }
    for (i, deps) in imports.iter().enumerate() {
        // Modules that import each other (a package's modules often do,
        // some only under `if TYPE_CHECKING:`) have no order that puts
        // each after the other: the spec's order stands for them.
        if let Some(&j) = deps.iter().find(|&&j| j > i && !reaches(&imports, j, i)) {
            let order = dependency_order(&names, &imports).join(", ");
            return Err(source
                .problem(
                    spec.reload[i].module.span(),
                    format!(
                        "`{}` imports from `{}`, which this spec reloads after it",
                        names[i], names[j]
                    ),
                    "reloaded too early",
                )
                .with_help(format!(
                    "reload `{}` first; in import order the [[reload]] tables are: {order}",
                    names[j]
                )));
        }
    }
    Ok(())
}

/// Whether module `from` imports `to`, directly or through other updated modules.
fn reaches(imports: &[Vec<usize>], from: usize, to: usize) -> bool {
    let mut seen = vec![false; imports.len()];
    let mut stack = vec![from];
    while let Some(i) = stack.pop() {
        if i == to {
            return true;
        }
        if !std::mem::replace(&mut seen[i], true) {
            stack.extend(&imports[i]);
        }
    }
    false
}

/// Whether `package` is a package that contains `module`.
fn is_ancestor(package: &str, module: &str) -> bool {
    module.len() > package.len() && module.starts_with(package) && module.as_bytes()[package.len()] == b'.'
}

/// The updated modules, each after the ones it imports from (the spec's
/// order where the imports leave it free, or if they form a cycle).
fn dependency_order<'a>(names: &[&'a str], imports: &[Vec<usize>]) -> Vec<&'a str> {
    let mut placed = vec![false; names.len()];
    let mut order = Vec::new();
    while order.len() < names.len() {
        let next = (0..names.len())
            .find(|&i| !placed[i] && imports[i].iter().all(|&j| placed[j]))
            .or_else(|| (0..names.len()).find(|&i| !placed[i]))
            .expect("an unplaced module remains");
        placed[next] = true;
        order.push(names[next]);
    }
    order
}

/// Checks each `[[transform]]` against the program: its target's module is
/// loaded or part of the update, its transformer's module can be found, and
/// its defaults compile.
fn transforms(
    py: Python<'_>,
    support: &Support<'_>,
    source: &SpecSource,
    spec: &Spec,
    sys_modules: &Bound<'_, PyDict>,
    modules: &[ModulePlan],
) -> Result<Vec<TransformPlan>, Problem> {
    let updated: Vec<&str> = spec.reload.iter().map(|r| r.module.get_ref().as_str()).collect();
    let new_codes = PyDict::new(py);
    for m in modules {
        new_codes
            .set_item(&m.name, m.code.bind(py))
            .map_err(|e| Problem::new(e.to_string()))?;
    }
    let known = |path: &str| {
        let module = module_part(path, sys_modules, &updated);
        module.is_some()
    };
    let mut out = Vec::new();
    for t in &spec.transform {
        let target = t.target();
        if !known(target.get_ref()) {
            return Err(source
                .problem(
                    target.span(),
                    format!("no module of `{}` is loaded or updated", target.get_ref()),
                    "unknown module",
                )
                .with_help("name the class or global with its module, as `package.module.Name`"));
        }
        for f in [t.function.as_ref(), t.reverse.as_ref()].into_iter().flatten() {
            support.import_module_of(f.get_ref()).map_err(|e| {
                let mut p = support.problem(
                    py,
                    &format!("the module of `{}` could not be imported", f.get_ref()),
                    &e,
                );
                if p.location.is_none() {
                    p.location = Some(Box::new(source.location(f.span())));
                    p.label = Some("the transformer".into());
                }
                p.help = Some(
                    "fix the module's top-level code; it is imported, as on a first import, when the update prepares"
                        .into(),
                );
                p
            })?;
            if !known(f.get_ref()) {
                return Err(source
                    .problem(
                        f.span(),
                        format!("no module of `{}` is loaded, updated or importable", f.get_ref()),
                        "unknown module",
                    )
                    .with_help("put transformers in a module the update loads, or one the program can import"));
            }
            let why = support
                .check_transformer(f.get_ref(), &new_codes)
                .map_err(|e| support.problem(py, "could not check a transformer", &e))?;
            if let Some(why) = why {
                return Err(source.problem(f.span(), why, "not a usable transformer").with_help(
                    "a transformer takes one argument: the instance (class transform) or the old value (global transform)",
                ));
            }
        }
        if t.mode() == crate::spec::Mode::Lazy && t.class.is_some() {
            // A lazy migration records converted instances with weak
            // references; a class whose __slots__ leave them out cannot have one.
            let weakrefable = support
                .resolve(target.get_ref())
                .and_then(|class| class.getattr("__weakrefoffset__"))
                .and_then(|offset| offset.extract::<isize>())
                .map(|offset| offset != 0);
            if let Ok(false) = weakrefable {
                return Err(source
                    .problem(
                        target.span(),
                        format!(
                            "`{}` cannot be migrated lazily: its instances do not support weak references",
                            target.get_ref()
                        ),
                        "mode = \"lazy\"",
                    )
                    .with_help("use mode = \"eager\", or add \"__weakref__\" to the class's __slots__"));
            }
        }
        let mut defaults = Vec::new();
        for (name, expr) in &t.defaults {
            let compiled = compile_expression(py, support, source, expr, &format!("defaults.{name}"))?;
            let globals = support
                .check_globals(compiled.code.bind(py))
                .map_err(|e| support.problem(py, "could not prepare a default", &e))?;
            defaults.push((name.clone(), compiled.code, globals.into_any().unbind()));
        }
        let path = target.get_ref().clone();
        let target_kind = match &t.global {
            Some(g) => {
                let (module, name) = g.get_ref().rsplit_once('.').expect("validated: dotted");
                TransformTarget::Global {
                    module: module.to_string(),
                    name: name.to_string(),
                }
            }
            None => TransformTarget::Class,
        };
        out.push(TransformPlan {
            target: target_kind,
            path,
            function: t.function.as_ref().map(|f| f.get_ref().clone()),
            defaults,
            mode: t.mode(),
            reverse: t.reverse.as_ref().map(|r| r.get_ref().clone()),
            location: Some(source.location(target.span())),
        });
    }
    Ok(out)
}

/// The longest prefix of `path` that is a loaded or updated module.
fn module_part<'a>(path: &'a str, sys_modules: &Bound<'_, PyDict>, updated: &[&str]) -> Option<&'a str> {
    let mut end = path.len();
    while let Some(dot) = path[..end].rfind('.') {
        let module = &path[..dot];
        if updated.contains(&module) || sys_modules.contains(module).unwrap_or(false) {
            return Some(module);
        }
        end = dot;
    }
    None
}

/// The functions that must not be running when the update commits: by
/// default every function it changes or removes, plus `inactive`, minus
/// `allow_active`. Returned as (dotted path, code object).
fn inactive_set<'py>(
    py: Python<'py>,
    support: &Support<'py>,
    source: &SpecSource,
    spec: &Spec,
    sys_modules: &Bound<'py, PyDict>,
    modules: &[ModulePlan],
) -> Result<Vec<(String, Bound<'py, PyAny>)>, Problem> {
    let resolve = |path: &Spanned<String>, key: &str| {
        resolve_function_code(sys_modules, path.get_ref()).map_err(|why| {
            source.problem(
                path.span(),
                format!("`{}` in `{key}` cannot be checked for activity: {why}", path.get_ref()),
                "not a function in the program",
            )
        })
    };
    let mut set: Vec<(String, Bound<'py, PyAny>)> = Vec::new();
    for m in modules {
        let changed = support
            .changed_functions(m.module.bind(py).as_any(), m.code.bind(py))
            .map_err(|e| support.problem(py, &format!("could not compare the functions of `{}`", m.name), &e))?;
        set.extend(
            changed
                .into_iter()
                .map(|(qualname, code)| (format!("{}.{qualname}", m.name), code)),
        );
    }
    for path in &spec.safe_point.allow_active {
        let code = resolve(path, "allow_active")?;
        set.retain(|(_, c)| !c.is(&code));
    }
    for path in &spec.safe_point.inactive {
        let code = resolve(path, "inactive")?;
        if !set.iter().any(|(_, c)| c.is(&code)) {
            set.push((path.get_ref().clone(), code));
        }
    }
    Ok(set)
}

fn check_program(state: &ProcessState, source: &SpecSource, spec: &Spec) -> Result<(), Problem> {
    if let Some(program) = &spec.update.program {
        if program.get_ref() != &state.name {
            return Err(source
                .problem(
                    program.span(),
                    format!(
                        "this update is for `{}`, but the program is `{}`",
                        program.get_ref(),
                        state.name
                    ),
                    "program name",
                )
                .with_help("choose the right program with --pid, or start it with `pyreload run --name`"));
        }
    }
    Ok(())
}

fn check_version(state: &ProcessState, source: &SpecSource, spec: &Spec) -> Result<(), Problem> {
    let current = state.version();
    let to = spec.update.to.get_ref();
    if current.as_deref() == Some(to.as_str()) && spec.update.from.as_ref().map(|f| f.get_ref()) != Some(to) {
        return Err(source
            .problem(
                spec.update.to.span(),
                format!("the program is already at version {to}"),
                "already applied",
            )
            .with_help("`pyreload status` shows the update history"));
    }
    if let Some(from) = &spec.update.from {
        if current.as_deref() != Some(from.get_ref().as_str()) {
            let problem = match &current {
                Some(v) => source
                    .problem(
                        from.span(),
                        format!(
                            "the program runs version {v}, but this update is from version {}",
                            from.get_ref()
                        ),
                        "version mismatch",
                    )
                    .with_help("apply the updates in order; `pyreload status` shows the current version"),
                None => source
                    .problem(
                        from.span(),
                        format!(
                            "the program has no version, but this update is from version {}",
                            from.get_ref()
                        ),
                        "version mismatch",
                    )
                    .with_help(format!(
                        "start the program with `pyreload run --version {} ...`",
                        from.get_ref()
                    )),
            };
            return Err(problem);
        }
    }
    Ok(())
}

/// A fresh, empty module object for a module new in this version, as the
/// import system would make it for `path`. It joins `sys.modules` only when
/// the update commits.
fn new_module<'py>(
    py: Python<'py>,
    support: &Support<'py>,
    sys_modules: &Bound<'py, PyDict>,
    new_before: &[&str],
    source: &SpecSource,
    name: &Spanned<String>,
    path: &Path,
) -> Result<Bound<'py, PyAny>, Problem> {
    let n = name.get_ref();
    if sys_modules.contains(n).unwrap_or(false) {
        return Err(source
            .problem(
                name.span(),
                format!("module `{n}` is already loaded, so it is not new"),
                "new = true",
            )
            .with_help("remove `new = true` to reload it"));
    }
    if let Some((parent, _)) = n.rsplit_once('.') {
        if !sys_modules.contains(parent).unwrap_or(false) && !new_before.contains(&parent) {
            return Err(source
                .problem(
                    name.span(),
                    format!("the package `{parent}` of new module `{n}` is not loaded"),
                    "its package must be loaded",
                )
                .with_help(format!(
                    "list `{parent}` before it, with `new = true`, or leave `{n}` out"
                )));
        }
    }
    py.import("importlib.util")
        .and_then(|util| {
            let spec = util.call_method1("spec_from_file_location", (n.as_str(), path))?;
            let module = util.call_method1("module_from_spec", (spec,))?;
            // As an import would have it once the body ran: functions merged
            // into this namespace find their builtins here.
            module.setattr("__builtins__", py.import("builtins")?.getattr("__dict__")?)?;
            Ok(module)
        })
        .map_err(|e| support.problem(py, &format!("could not create new module `{n}`"), &e))
}

fn find_module<'py>(
    py: Python<'py>,
    support: &Support<'py>,
    sys_modules: &Bound<'py, PyDict>,
    source: &SpecSource,
    name: &Spanned<String>,
) -> Result<Bound<'py, PyAny>, Problem> {
    let n = name.get_ref();
    if n == "__main__" {
        return Err(source
            .problem(name.span(), "`__main__` cannot be reloaded", "the main script")
            .with_help("running the main script again would restart the program; move the code to update into a module it imports"));
    }
    match sys_modules
        .get_item(n)
        .map_err(|e| support.problem(py, "could not read sys.modules", &e))?
    {
        Some(m) if !m.is_none() => Ok(m),
        _ => {
            let keys: Vec<String> = sys_modules.keys().extract().unwrap_or_default();
            let mut problem = source.problem(
                name.span(),
                format!("module `{n}` is not loaded in the program"),
                "not in sys.modules",
            );
            problem = match did_you_mean(n, keys.iter().map(String::as_str)) {
                Some(best) => problem.with_help(format!("did you mean `{best}`?")),
                None => problem.with_help(
                    "only modules the program has imported can be reloaded; a module new in this version needs `new = true` and a `source`",
                ),
            };
            Err(problem)
        }
    }
}

/// `reset` names a global the new source must define; anything else is a typo.
fn check_reset_names(
    source: &SpecSource,
    reload: &crate::spec::Reload,
    code: &Bound<'_, PyAny>,
) -> Result<(), Problem> {
    let names: Vec<String> = code.getattr("co_names").and_then(|n| n.extract()).unwrap_or_default();
    for reset in &reload.reset {
        // `Class.attr` names a class attribute: its class must be a global.
        let global = reset.get_ref().split('.').next().unwrap_or_default();
        if !names.iter().any(|n| n == global) {
            let mut p = source.problem(
                reset.span(),
                format!(
                    "`{}` is listed in `reset`, but the new source of `{}` does not define it",
                    reset.get_ref(),
                    reload.module.get_ref()
                ),
                "not a global of the new source",
            );
            if let Some(best) = did_you_mean(reset.get_ref(), names.iter().map(String::as_str)) {
                p = p.with_help(format!("did you mean `{best}`?"));
            }
            return Err(p);
        }
    }
    Ok(())
}

/// The code object of the function at a dotted path such as
/// `pkg.mod.Class.method`: the longest prefix that is a loaded module, then
/// attributes.
fn resolve_function_code<'py>(sys_modules: &Bound<'py, PyDict>, path: &str) -> Result<Bound<'py, PyAny>, String> {
    let parts: Vec<&str> = path.split('.').collect();
    let (mut obj, rest) = (1..=parts.len())
        .rev()
        .find_map(|i| {
            let name = parts[..i].join(".");
            sys_modules.get_item(&name).ok().flatten().map(|m| (m, &parts[i..]))
        })
        .ok_or_else(|| format!("no module of `{path}` is loaded"))?;
    for (i, attr) in rest.iter().enumerate() {
        let next = match obj.getattr("__dict__").ok().and_then(|d| d.get_item(*attr).ok()) {
            Some(v) => v,
            None => obj.getattr(*attr).map_err(|_| {
                format!(
                    "`{}` has no attribute `{attr}`",
                    parts[..parts.len() - rest.len() + i].join(".")
                )
            })?,
        };
        obj = next;
    }
    let function = if obj.hasattr("__func__").unwrap_or(false) {
        obj.getattr("__func__").map_err(|e| e.to_string())?
    } else {
        obj
    };
    function
        .getattr("__code__")
        .map_err(|_| "it is not a Python function".to_string())
}

/// Compiles a spec expression where it will run, importing the submodules
/// it names, so that a typo is refused now and not at commit time.
fn compile_expression(
    py: Python<'_>,
    support: &Support<'_>,
    source: &SpecSource,
    expr: &Spanned<String>,
    what: &str,
) -> Result<Expression, Problem> {
    let location = source.location(expr.span());
    let code = py
        .import("builtins")
        .and_then(|b| b.getattr("compile"))
        .and_then(|compile| compile.call1((expr.get_ref().as_str(), format!("<{what}>"), "eval", 0, true)))
        .map_err(|e| {
            let mut p = support.problem(py, &format!("`{what}` is not a valid Python expression"), &e);
            p.location = Some(Box::new(location.clone()));
            p.label = Some("syntax error in this expression".into());
            p.causes.clear();
            p
        })?;
    support.import_named_modules(expr.get_ref()).map_err(|e| {
        let mut p = support.problem(py, &format!("could not import a module that `{what}` names"), &e);
        p.location = Some(Box::new(location.clone()));
        p.label = Some("names this module".into());
        p
    })?;
    Ok(Expression {
        text: expr.get_ref().clone(),
        location,
        code: code.unbind(),
    })
}
