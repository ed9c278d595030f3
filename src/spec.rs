//! The update spec: the TOML a user writes, parsed into typed structs and
//! checked without touching any program.
//!
//! This is the first of two stages (see `shared/style.md`): a [`Spec`] is
//! only known to be well-formed. Whether its modules exist, its sources
//! compile and its versions match is decided against the live program when
//! the host builds a [`crate::plan::Plan`].

use std::collections::HashMap;
use std::ops::Range;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::diagnostic::{Location, Problem};

/// Default for `[safe_point] timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Longest safe-point wait a spec may ask for: one hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Default for `[safe_point] commit_timeout_ms`.
pub const DEFAULT_COMMIT_TIMEOUT_MS: u64 = 10_000;
/// Default for `[safe_point] run_alone_us`.
pub const DEFAULT_RUN_ALONE_US: u64 = 500;
/// Longest `[safe_point] run_alone_us`: one second, all of it a pause.
pub const MAX_RUN_ALONE_US: u64 = 1_000_000;
/// Default for `[tree] hold_ms`.
pub const DEFAULT_HOLD_MS: u64 = 100;
/// Longest `[tree] hold_ms`: every member of the tree is stopped that long.
pub const MAX_HOLD_MS: u64 = 10_000;

/// A parsed, statically valid update spec.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub update: Update,
    #[serde(default)]
    pub reload: Vec<Reload>,
    #[serde(default)]
    pub safe_point: SafePoint,
    #[serde(default)]
    pub transform: Vec<Transform>,
    #[serde(default)]
    pub check: Check,
    #[serde(default)]
    pub tree: Tree,
}

/// How a class transform converts live instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every instance during the commit.
    #[default]
    Eager,
    /// Each instance on its first use after the commit.
    Lazy,
}

/// `[[transform]]`: converts live data to the new version's representation.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    /// A class (dotted path) whose live instances are converted, in place.
    #[schemars(with = "Option<String>")]
    pub class: Option<Spanned<String>>,
    /// A module global (dotted path) whose value is converted or replaced.
    #[schemars(with = "Option<String>")]
    pub global: Option<Spanned<String>>,
    /// The transformer (dotted path, resolved in the updated program). For
    /// a class: called once per instance, mutating it or returning its new
    /// `__dict__`. For a global: called with the old value, returns the new.
    #[schemars(with = "Option<String>")]
    pub function: Option<Spanned<String>>,
    /// Class transforms only: attributes to add, each a Python expression
    /// evaluated per instance (`{ ttl = "None" }`).
    #[serde(default)]
    #[schemars(with = "std::collections::BTreeMap<String, String>")]
    pub defaults: std::collections::BTreeMap<String, Spanned<String>>,
    /// Class transforms only: `eager` (default) or `lazy`.
    #[schemars(with = "Option<Mode>")]
    pub mode: Option<Spanned<Mode>>,
    /// The transformer that converts the data back, used by `pyreload
    /// rollback`. Without it, an update that transforms data cannot be
    /// rolled back.
    #[schemars(with = "Option<String>")]
    pub reverse: Option<Spanned<String>>,
}

impl Transform {
    pub fn mode(&self) -> Mode {
        self.mode.as_ref().map(|m| *m.get_ref()).unwrap_or_default()
    }

    /// The class or global this transform converts.
    pub fn target(&self) -> &Spanned<String> {
        self.class
            .as_ref()
            .or(self.global.as_ref())
            .expect("validated: a transform has a class or a global")
    }
}

/// `[update]`: what this update is and which version it moves between.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// Shown in reports and in `pyreload status` history.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// When set, the running program's name must match.
    #[schemars(with = "Option<String>")]
    pub program: Option<Spanned<String>>,
    /// When set, the running program must be at this version.
    #[schemars(with = "Option<String>")]
    pub from: Option<Spanned<String>>,
    /// The version the program is at once the update commits.
    #[schemars(with = "String")]
    pub to: Spanned<String>,
}

/// `[[reload]]`: one module to load again from new source.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reload {
    /// Dotted module name, as in `sys.modules`.
    #[schemars(with = "String")]
    pub module: Spanned<String>,
    /// New source file, relative to the spec's directory. Defaults to the
    /// module's own file on disk.
    #[schemars(with = "Option<String>")]
    pub source: Option<Spanned<String>>,
    /// Globals that keep their running value even though they look like
    /// plain constants (e.g. a counter held in an int). `Class.attr` names
    /// a class attribute.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub keep: Vec<Spanned<String>>,
    /// Globals that take the new source's value even though they hold data
    /// (e.g. a dispatch table built at import). `Class.attr` names a class
    /// attribute.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub reset: Vec<Spanned<String>>,
    /// The module is new in this version: it is loaded from `source` and
    /// added to the program, instead of reloaded.
    #[serde(default)]
    pub new: bool,
}

/// `[safe_point]`: when the update may happen.
///
/// By default every function the update changes or removes must be inactive:
/// on no thread's stack, and not suspended in a generator or coroutine.
/// `inactive` adds functions to that set, `allow_active` takes some out.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SafePoint {
    /// More functions and methods (dotted paths) that must not be running
    /// when the update commits, beyond those it changes.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub inactive: Vec<Spanned<String>>,
    /// Changed functions whose running calls may finish with the old code.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub allow_active: Vec<Spanned<String>>,
    /// A Python expression that must be true at the moment of commit,
    /// evaluated in the program while every other thread is stopped.
    #[schemars(with = "Option<String>")]
    pub condition: Option<Spanned<String>>,
    /// Commit only while a thread waits in `pyreload.update_point(NAME)`.
    #[schemars(with = "Option<String>")]
    pub update_point: Option<Spanned<String>>,
    /// How long to wait for the safe point before refusing the update.
    #[schemars(with = "Option<u64>")]
    pub timeout_ms: Option<Spanned<u64>>,
    /// How long the update's own code may run once the wait is over: the
    /// new module bodies in staging, then the commit (merge, transforms,
    /// `[check] after`). Past it, the running code is interrupted with
    /// `pyreload.UpdateTimeout` and the update refused or rolled back.
    /// Default 10000.
    #[schemars(with = "Option<u64>")]
    pub commit_timeout_ms: Option<Spanned<u64>>,
    /// When the commit finds threads inside functions that must be
    /// inactive, how long (microseconds) it may let just those threads run
    /// on, every other thread still stopped, to leave them, before it
    /// lets every thread go and looks again a millisecond or more later.
    /// Part of the pause when used. 0 turns it off. Default 500.
    #[schemars(with = "Option<u64>")]
    pub run_alone_us: Option<Spanned<u64>>,
}

impl SafePoint {
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
            .as_ref()
            .map(|t| *t.get_ref())
            .unwrap_or(DEFAULT_TIMEOUT_MS)
    }

    pub fn commit_timeout_ms(&self) -> u64 {
        self.commit_timeout_ms
            .as_ref()
            .map(|t| *t.get_ref())
            .unwrap_or(DEFAULT_COMMIT_TIMEOUT_MS)
    }

    pub fn run_alone_us(&self) -> u64 {
        self.run_alone_us
            .as_ref()
            .map(|t| *t.get_ref())
            .unwrap_or(DEFAULT_RUN_ALONE_US)
    }
}

/// How the members of a process tree commit, once every one has staged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TreeCommit {
    /// Each member at its own safe point, with its own pause, as a program
    /// alone does: the shortest pauses; on a busy machine the members
    /// switch over several milliseconds.
    #[default]
    Each,
    /// Every member stops at its safe point and merges, then all resume
    /// at once: the members switch within the release alone, and none
    /// ever serves the new version unless every one merged; a member's
    /// pause includes waiting for the others (at most `hold_ms`).
    Together,
}

/// `[tree]`: for a program with worker processes (gunicorn, uvicorn,
/// multiprocessing), how its members commit. A program alone ignores it.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tree {
    /// `each` (the default) or `together`.
    #[schemars(with = "Option<TreeCommit>")]
    pub commit: Option<Spanned<TreeCommit>>,
    /// With `commit = "together"`: how long a stopped member waits for the
    /// others to stop and merge. Past it every member rolls back, resumes
    /// on the old version, and the update is refused. Default 100.
    #[schemars(with = "Option<u64>")]
    pub hold_ms: Option<Spanned<u64>>,
    /// Whether each member's pyreload thread waits for the commit's bell,
    /// and makes its part of the commit, at real-time priority
    /// (`SCHED_FIFO` 2) where the process may ask for it (`CAP_SYS_NICE`
    /// or an `RLIMIT_RTPRIO`): woken, it runs at once instead of behind the
    /// threads that keep the cores busy, so the members switch within
    /// microseconds of each other; until it holds the GIL, the program's
    /// threads run at priority 1, so the holder hands it over at once. Elsewhere, and with `false`, it asks for
    /// the shortest scheduler slice instead. Default true.
    #[schemars(with = "Option<bool>")]
    pub realtime: Option<Spanned<bool>>,
}

impl Tree {
    pub fn commit(&self) -> TreeCommit {
        self.commit.as_ref().map(|c| *c.get_ref()).unwrap_or_default()
    }

    /// Whether members wait for the bell at real-time priority, where
    /// permitted.
    pub fn realtime(&self) -> bool {
        self.realtime.as_ref().is_none_or(|r| *r.get_ref())
    }

    /// How long a stopped member waits for the others (`together`).
    pub fn hold(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.hold_ms.as_ref().map(|h| *h.get_ref()).unwrap_or(DEFAULT_HOLD_MS))
    }
}

/// `[check]`: how to tell that the updated program is healthy.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// A Python expression evaluated right after the commit. False or an
    /// exception rolls the update back.
    #[schemars(with = "Option<String>")]
    pub after: Option<Spanned<String>>,
}

/// The JSON Schema of the spec format, for editors (Taplo / Even Better
/// TOML) and tools. It comes from these types, so it cannot drift from
/// what pyreload accepts.
pub fn json_schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(Spec)).expect("schemas serialize");
    schema["title"] = "pyreload update spec".into();
    schema
}

/// A spec file's text with its path, so every error can point into it.
#[derive(Debug, Clone)]
pub struct SpecSource {
    pub path: String,
    pub text: String,
}

impl SpecSource {
    pub fn location(&self, span: Range<usize>) -> Location {
        Location::in_text(&self.path, &self.text, span)
    }

    /// A problem pointing at `span` in this spec.
    pub fn problem(&self, span: Range<usize>, message: impl Into<String>, label: impl Into<String>) -> Problem {
        Problem::new(message).at(self.location(span), label)
    }
}

/// Parses and statically validates a spec. Every problem found is returned,
/// not only the first, so one edit can fix them all.
pub fn parse(source: &SpecSource) -> Result<Spec, Vec<Problem>> {
    let spec: Spec = toml::from_str(&source.text).map_err(|e| vec![toml_problem(source, &e)])?;
    let problems = validate(source, &spec);
    if problems.is_empty() {
        Ok(spec)
    } else {
        Err(problems)
    }
}

fn toml_problem(source: &SpecSource, e: &toml::de::Error) -> Problem {
    let message = e.message().trim().to_string();
    let mut problem = Problem::new(format!("invalid update spec: {message}"));
    if let Some(span) = e.span() {
        problem = problem.at(source.location(span), "here");
    }
    let value = e.span().and_then(|span| source.text.get(span)).unwrap_or_default();
    let help = unknown_field_help(&message)
        .or_else(|| missing_field_help(&message))
        .or_else(|| value_help(&message, value))
        .unwrap_or_else(|| "fix the TOML at the place shown; `pyreload schema` describes every key".into());
    problem.with_help(help)
}

/// How to write a value serde or the TOML parser refused (`value` is the
/// refused text, when there is one).
fn value_help(message: &str, value: &str) -> Option<String> {
    if message.contains("expected a sequence") {
        return Some(
            "`reload` and `transform` are lists of tables: write [[reload]] (double brackets), once per module".into(),
        );
    }
    if message.ends_with("expected a string") {
        return Some(format!("write it as a string, in double quotes: \"{}\"", value.trim()));
    }
    if message.ends_with("expected a boolean") {
        return Some("write `true` or `false`, without quotes".into());
    }
    if message.ends_with("expected u64") {
        return Some("write a whole number of milliseconds, without quotes or units, such as 5000".into());
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (variant, expected) = rest.split_once('`')?;
        let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let list = candidates
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(" or ");
        return Some(match did_you_mean(variant, candidates.iter().copied()) {
            Some(best) => format!("did you mean `{best}`? (one of {list})"),
            None => format!("write one of {list}"),
        });
    }
    if message.starts_with("duplicate key") {
        return Some("a key appears once per table: remove one of the two".into());
    }
    if message.starts_with("invalid basic string") || message.starts_with("invalid literal string") {
        return Some("close the string on the same line; for text over several lines use \"\"\"...\"\"\"".into());
    }
    None
}

/// serde says "unknown field `nmae`, expected one of `name`, `from`, ...";
/// turn that into a suggestion.
fn unknown_field_help(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match did_you_mean(field, candidates.iter().copied()) {
        Some(best) => Some(format!("did you mean `{best}`?")),
        None => Some(format!(
            "the known keys here are {}",
            candidates
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// serde says "missing field `to`"; say what to add.
fn missing_field_help(message: &str) -> Option<String> {
    let field = message.strip_prefix("missing field `")?.split('`').next()?;
    Some(match field {
        "update" => {
            "every spec starts with an [update] table:\n\n[update]\nname = \"my-update\"\nto = \"2.0\"".to_string()
        }
        "module" => "each [[reload]] table names its module: module = \"package.module\"".to_string(),
        f => format!("add `{f} = ...` here; `pyreload schema` describes every key"),
    })
}

/// The closest candidate to `word`, if any is close enough to be a typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Every text value in the spec with the key it is under, for checks that
/// look at all of them alike.
fn text_fields(spec: &Spec) -> Vec<(String, &Spanned<String>)> {
    let mut fields = vec![("[update] name".to_string(), &spec.update.name)];
    fields.extend(spec.update.program.iter().map(|v| ("[update] program".to_string(), v)));
    fields.extend(spec.update.from.iter().map(|v| ("[update] from".to_string(), v)));
    fields.push(("[update] to".to_string(), &spec.update.to));
    for (i, r) in spec.reload.iter().enumerate() {
        fields.push((format!("reload[{i}].module"), &r.module));
        fields.extend(r.source.iter().map(|v| (format!("reload[{i}].source"), v)));
        fields.extend(r.keep.iter().map(|v| (format!("reload[{i}].keep"), v)));
        fields.extend(r.reset.iter().map(|v| (format!("reload[{i}].reset"), v)));
    }
    let sp = &spec.safe_point;
    fields.extend(sp.inactive.iter().map(|v| ("[safe_point] inactive".to_string(), v)));
    fields.extend(
        sp.allow_active
            .iter()
            .map(|v| ("[safe_point] allow_active".to_string(), v)),
    );
    fields.extend(sp.condition.iter().map(|v| ("[safe_point] condition".to_string(), v)));
    fields.extend(
        sp.update_point
            .iter()
            .map(|v| ("[safe_point] update_point".to_string(), v)),
    );
    for (i, t) in spec.transform.iter().enumerate() {
        for (key, value) in [
            ("class", &t.class),
            ("global", &t.global),
            ("function", &t.function),
            ("reverse", &t.reverse),
        ] {
            fields.extend(value.iter().map(|v| (format!("transform[{i}].{key}"), v)));
        }
        fields.extend(
            t.defaults
                .iter()
                .map(|(k, v)| (format!("transform[{i}].defaults.{k}"), v)),
        );
    }
    fields.extend(spec.check.after.iter().map(|v| ("[check] after".to_string(), v)));
    fields
}

/// A draft from `pyreload new` marks each decision it leaves to the user
/// with a `"TODO: ..."` value. Applying it as it is would fail later with a
/// message about the placeholder (say, "this update is from version TODO:
/// ..."), which hides the real cause: the draft is not finished.
fn undecided_todos(source: &SpecSource, spec: &Spec) -> Vec<Problem> {
    text_fields(spec)
        .into_iter()
        .filter(|(_, value)| value.get_ref().trim_start().starts_with("TODO:"))
        .map(|(key, value)| {
            source
                .problem(
                    value.span(),
                    format!("{key} is still an undecided TODO from `pyreload new`"),
                    "not decided",
                )
                .with_help(format!(
                    "replace {:?} with your decision (each TODO says what it needs), then run `pyreload check` on the spec",
                    value.get_ref()
                ))
        })
        .collect()
}

fn validate(source: &SpecSource, spec: &Spec) -> Vec<Problem> {
    let todos = undecided_todos(source, spec);
    if !todos.is_empty() {
        // Other problems in an unfinished draft follow from the TODOs.
        return todos;
    }
    let mut problems = Vec::new();
    let mut require_text = |field: &Spanned<String>, what: &str, help: &str| {
        if field.get_ref().trim().is_empty() {
            problems.push(
                source
                    .problem(field.span(), format!("{what} must not be empty"), "empty")
                    .with_help(help),
            );
        }
    };
    require_text(
        &spec.update.name,
        "[update] name",
        "name the update as `pyreload status` will list it, such as name = \"v1-to-v2\"",
    );
    require_text(
        &spec.update.to,
        "[update] to",
        "give the program's version once the update commits, such as to = \"2.0\"",
    );
    if let Some(from) = &spec.update.from {
        require_text(
            from,
            "[update] from",
            "give the version the update applies to, such as from = \"1.0\", or remove the line to accept any",
        );
    }
    if let Some(program) = &spec.update.program {
        require_text(
            program,
            "[update] program",
            "give the program's `pyreload run --name`, or remove the line to accept any program",
        );
    }
    if let Some(after) = &spec.check.after {
        require_text(
            after,
            "[check] after",
            "write a Python expression that is true when the update worked, such as after = \"app.health.ok()\", or remove the line",
        );
    }
    if let Some(condition) = &spec.safe_point.condition {
        require_text(
            condition,
            "[safe_point] condition",
            "write a Python expression that is true when the update may happen, such as condition = \"app.stats.in_flight == 0\", or remove the line",
        );
    }
    if let Some(point) = &spec.safe_point.update_point {
        require_text(
            point,
            "[safe_point] update_point",
            "give the name the program passes to pyreload.update_point(\"...\"), or remove the line",
        );
    }

    if spec.reload.is_empty() && spec.transform.is_empty() {
        problems.push(
            Problem::new("the spec changes nothing")
                .at(
                    source.location(0..0),
                    "no [[reload]] or [[transform]] table in this file",
                )
                .with_help("add a table per module to update:\n\n[[reload]]\nmodule = \"package.module\""),
        );
    }

    let mut seen: HashMap<&str, Range<usize>> = HashMap::new();
    for reload in &spec.reload {
        let module = reload.module.get_ref();
        if module.is_empty() {
            problems.push(
                source
                    .problem(
                        reload.module.span(),
                        "the module name is empty",
                        "expected a dotted name such as `kvserver.store`",
                    )
                    .with_help(MODULE_HELP),
            );
        } else if !is_dotted_name(module) {
            problems.push(
                source
                    .problem(
                        reload.module.span(),
                        format!("`{module}` is not a module name"),
                        "expected a dotted name such as `kvserver.store`",
                    )
                    .with_help(MODULE_HELP),
            );
        } else if let Some(first) = seen.get(module.as_str()) {
            let first = source.location(first.clone());
            problems.push(
                source
                    .problem(
                        reload.module.span(),
                        format!("module `{module}` is reloaded twice"),
                        "second time here",
                    )
                    .with_help(format!("remove one of the two; the first is at line {}", first.line)),
            );
        } else {
            seen.insert(module, reload.module.span());
        }
        let mut names: HashMap<&str, &str> = HashMap::new();
        for (list, kind) in [(&reload.keep, "keep"), (&reload.reset, "reset")] {
            for name in list {
                let n = name.get_ref();
                if !n.split('.').all(is_identifier) {
                    problems.push(
                        source
                            .problem(
                                name.span(),
                                format!("`{n}` is not a global name"),
                                "expected a Python identifier",
                            )
                            .with_help(format!(
                                "list globals by the name the module's source binds, such as {kind} = [\"COMMANDS\"], or a class attribute as \"Class.attr\""
                            )),
                    );
                } else if let Some(other) = names.insert(n, kind) {
                    problems.push(
                        source
                            .problem(
                                name.span(),
                                format!("`{n}` is listed in both `{other}` and `{kind}`"),
                                "listed again here",
                            )
                            .with_help(
                                "a global either keeps its running value (`keep`) or takes the new one (`reset`)",
                            ),
                    );
                }
            }
        }
    }

    let mut listed: HashMap<&str, &str> = HashMap::new();
    for (list, key) in [
        (&spec.safe_point.inactive, "inactive"),
        (&spec.safe_point.allow_active, "allow_active"),
    ] {
        for name in list {
            let n = name.get_ref();
            if !is_dotted_name(n) {
                problems.push(
                    source
                        .problem(
                            name.span(),
                            format!("`{n}` is not a function path"),
                            "expected a dotted path such as `kvserver.store.Store.compact`",
                        )
                        .with_help("name the function by its module, then its qualified name, joined by single dots"),
                );
            } else if let Some(other) = listed.insert(n, key) {
                if other != key {
                    problems.push(
                        source
                            .problem(
                                name.span(),
                                format!("`{n}` is listed in both `{other}` and `{key}`"),
                                "listed again here",
                            )
                            .with_help("a function either must be inactive or may stay active, not both"),
                    );
                }
            }
        }
    }
    for reload in &spec.reload {
        if reload.new && reload.source.is_none() {
            problems.push(
                source
                    .problem(
                        reload.module.span(),
                        format!("new module `{}` has no `source`", reload.module.get_ref()),
                        "new = true",
                    )
                    .with_help("a module the program does not have yet needs `source = \"path/to/module.py\"`"),
            );
        }
    }
    validate_transforms(source, spec, &mut problems);
    for (timeout, key) in [
        (&spec.safe_point.timeout_ms, "timeout_ms"),
        (&spec.safe_point.commit_timeout_ms, "commit_timeout_ms"),
    ] {
        let Some(timeout) = timeout else { continue };
        let t = *timeout.get_ref();
        if t == 0 || t > MAX_TIMEOUT_MS {
            problems.push(
                source
                    .problem(
                        timeout.span(),
                        format!("{key} = {t} is out of range"),
                        format!("expected 1 to {MAX_TIMEOUT_MS} (one hour)"),
                    )
                    .with_help(format!(
                        "{key} is in milliseconds: for 5 seconds, write {key} = 5000; remove the line for the default"
                    )),
            );
        }
    }
    if let Some(alone) = &spec.safe_point.run_alone_us {
        let us = *alone.get_ref();
        if us > MAX_RUN_ALONE_US {
            problems.push(
                source
                    .problem(
                        alone.span(),
                        format!("run_alone_us = {us} is out of range"),
                        format!("expected 0 to {MAX_RUN_ALONE_US} (one second)"),
                    )
                    .with_help(
                        "run_alone_us is in microseconds and all of it is a pause: the default, 500, lets a request thread leave a replaced function; 0 turns it off",
                    ),
            );
        }
    }
    validate_tree(source, spec, &mut problems);
    problems
}

fn validate_tree(source: &SpecSource, spec: &Spec, problems: &mut Vec<Problem>) {
    let Some(hold) = &spec.tree.hold_ms else { return };
    let h = *hold.get_ref();
    if spec.tree.commit() != TreeCommit::Together {
        problems.push(
            source
                .problem(
                    hold.span(),
                    "hold_ms applies only to commit = \"together\"",
                    "no effect here",
                )
                .with_help("add `commit = \"together\"` to [tree], or remove hold_ms"),
        );
    } else if h == 0 || h > MAX_HOLD_MS {
        problems.push(
            source
                .problem(
                    hold.span(),
                    format!("hold_ms = {h} is out of range"),
                    format!("expected 1 to {MAX_HOLD_MS}: every member stays stopped up to that long"),
                )
                .with_help("hold_ms is in milliseconds; remove the line for the default (100)"),
        );
    }
}

fn validate_transforms(source: &SpecSource, spec: &Spec, problems: &mut Vec<Problem>) {
    for t in &spec.transform {
        let (target, kind) = match (&t.class, &t.global) {
            (Some(c), None) => (c, "class"),
            (None, Some(g)) => (g, "global"),
            (Some(c), Some(_)) => {
                problems.push(
                    source
                        .problem(
                            c.span(),
                            "a [[transform]] converts either a `class` or a `global`, not both",
                            "here",
                        )
                        .with_help("split it into two [[transform]] tables"),
                );
                continue;
            }
            (None, None) => {
                let span = t.function.as_ref().map(|f| f.span()).unwrap_or(0..0);
                problems.push(
                    source
                        .problem(
                            span,
                            "a [[transform]] needs a `class` or a `global` to convert",
                            "in this table",
                        )
                        .with_help("add `class = \"package.module.Class\"` or `global = \"package.module.NAME\"`"),
                );
                continue;
            }
        };
        for path in [Some(target), t.function.as_ref(), t.reverse.as_ref()]
            .into_iter()
            .flatten()
        {
            if !is_dotted_name(path.get_ref()) || !path.get_ref().contains('.') {
                problems.push(
                    source
                        .problem(
                            path.span(),
                            format!("`{}` is not a dotted path", path.get_ref()),
                            "expected `package.module.name`",
                        )
                        .with_help("name it by the module that defines it, then its name, such as `kvserver.migrations.entry_v4`"),
                );
            }
        }
        if kind == "global" {
            if t.function.is_none() {
                problems.push(
                    source
                        .problem(
                            target.span(),
                            "a global transform needs a `function`",
                            "converts this global",
                        )
                        .with_help("the function is called with the old value and returns the new one"),
                );
            }
            if let Some((name, _)) = t.defaults.iter().next() {
                problems.push(
                    source
                        .problem(
                            target.span(),
                            format!("`defaults` ({name} = ...) apply to class transforms only"),
                            "a global",
                        )
                        .with_help("remove `defaults`: the `function` returns the global's new value"),
                );
            }
            if let Some(mode) = &t.mode {
                problems.push(
                    source
                        .problem(
                            mode.span(),
                            "`mode` applies to class transforms only",
                            "a global is converted once, in the commit",
                        )
                        .with_help("remove the `mode` line"),
                );
            }
        } else if t.function.is_none() && t.defaults.is_empty() {
            problems.push(
                source
                    .problem(
                        target.span(),
                        "a class transform needs a `function`, `defaults`, or both",
                        "converts this class",
                    )
                    .with_help("for new fields with default values: defaults = { ttl = \"None\" }"),
            );
        }
        for (name, expr) in &t.defaults {
            if !is_identifier(name) {
                problems.push(
                    source
                        .problem(
                            expr.span(),
                            format!("`{name}` is not an attribute name"),
                            "in `defaults`",
                        )
                        .with_help(format!(
                            "each key of `defaults` is an attribute to add, a Python identifier such as `{}`",
                            suggest_identifier(name)
                        )),
                );
            }
            if expr.get_ref().trim().is_empty() {
                problems.push(
                    source
                        .problem(
                            expr.span(),
                            format!("the default of `{name}` is empty"),
                            "expected a Python expression, such as \"None\"",
                        )
                        .with_help(format!(
                            "write the value as a Python expression, such as {name} = \"None\""
                        )),
                );
            }
        }
    }
}

const MODULE_HELP: &str = "write the module's name as an import would, such as module = \"kvserver.store\"";

/// `name` made an identifier (spaces and dashes to underscores), for help
/// texts.
fn suggest_identifier(name: &str) -> String {
    let s: String = name
        .trim()
        .chars()
        .map(|c| if c == '_' || c.is_alphanumeric() { c } else { '_' })
        .collect();
    if s.starts_with(|c: char| c.is_numeric()) || s.is_empty() {
        format!("_{s}")
    } else {
        s
    }
}

/// `a.b.c` where each part is a Python identifier.
pub fn is_dotted_name(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(is_identifier)
}

/// An ASCII-or-Unicode Python identifier (the common subset: a letter or
/// underscore, then letters, digits or underscores).
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic()) && chars.all(|c| c == '_' || c.is_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Spec, Vec<Problem>> {
        parse(&SpecSource {
            path: "spec.toml".into(),
            text: text.into(),
        })
    }

    const MINIMAL: &str = "[update]\nname = \"u\"\nto = \"2\"\n\n[[reload]]\nmodule = \"app.store\"\n";

    #[test]
    fn minimal_spec_parses_with_defaults() {
        let spec = parse_text(MINIMAL).unwrap();
        assert_eq!(spec.reload[0].module.get_ref(), "app.store");
        assert_eq!(spec.safe_point.timeout_ms(), DEFAULT_TIMEOUT_MS);
        assert!(spec.check.after.is_none());
    }

    #[test]
    fn unknown_key_names_line_and_suggests_the_fix() {
        let err = parse_text(&MINIMAL.replace("to = ", "too = ")).unwrap_err();
        let p = &err[0];
        assert!(p.message.contains("unknown field `too`"), "{p:?}");
        assert_eq!(p.location.as_ref().unwrap().line, 3);
        assert_eq!(p.help.as_deref(), Some("did you mean `to`?"));
    }

    #[test]
    fn static_problems_are_all_reported() {
        let text = "[update]\nname = \"\"\nto = \"2\"\n[[reload]]\nmodule = \"a b\"\n[[reload]]\nmodule = \"x\"\nkeep = [\"N\"]\nreset = [\"N\"]\n[[reload]]\nmodule = \"x\"\n[safe_point]\ntimeout_ms = 0\n";
        let problems = parse_text(text).unwrap_err();
        let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(problems.len(), 5, "{messages:?}");
        assert!(messages.iter().any(|m| m.contains("name must not be empty")));
        assert!(messages.iter().any(|m| m.contains("`a b` is not a module name")));
        assert!(messages.iter().any(|m| m.contains("both `keep` and `reset`")));
        assert!(messages.iter().any(|m| m.contains("reloaded twice")));
        assert!(messages.iter().any(|m| m.contains("timeout_ms = 0")));
    }

    #[test]
    fn the_readme_spec_example_and_every_worked_spec_parse() {
        let readme = include_str!("../README.md");
        let examples: Vec<&str> = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .collect();
        assert!(!examples.is_empty(), "README shows no spec");
        for example in examples {
            parse_text(example).unwrap_or_else(|e| panic!("README example does not parse: {e:?}\n{example}"));
        }
        for dir in ["specs", "bench/specs"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let text = std::fs::read_to_string(&path).unwrap();
                parse(&SpecSource {
                    path: path.display().to_string(),
                    text,
                })
                .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            }
        }
    }

    #[test]
    fn names() {
        assert!(is_dotted_name("kvserver.store.Store"));
        assert!(!is_dotted_name("kvserver..store"));
        assert!(!is_dotted_name("1abc"));
        assert!(is_identifier("_x1"));
    }

    #[test]
    fn tree_commits_each_by_default_and_together_holds_100_ms_unless_told() {
        let spec = parse_text(MINIMAL).unwrap();
        assert_eq!(spec.tree.commit(), TreeCommit::Each);
        let spec = parse_text(&format!("{MINIMAL}[tree]\ncommit = \"together\"\n")).unwrap();
        assert_eq!(spec.tree.commit(), TreeCommit::Together);
        assert_eq!(spec.tree.hold(), std::time::Duration::from_millis(DEFAULT_HOLD_MS));
    }

    #[test]
    fn members_wait_at_real_time_priority_unless_told_not_to() {
        assert!(parse_text(MINIMAL).unwrap().tree.realtime());
        let spec = parse_text(&format!("{MINIMAL}[tree]\nrealtime = false\n")).unwrap();
        assert!(!spec.tree.realtime());
        let e = parse_text(&format!("{MINIMAL}[tree]\nrealtime = \"yes\"\n")).unwrap_err();
        let e = format!("{e:?}");
        assert!(e.contains("expected a boolean") && e.contains("line: 8"), "{e}");
    }

    #[test]
    fn run_alone_us_defaults_to_half_a_millisecond_and_is_at_most_a_second() {
        assert_eq!(
            parse_text(MINIMAL).unwrap().safe_point.run_alone_us(),
            DEFAULT_RUN_ALONE_US
        );
        let spec = parse_text(&format!(
            "{MINIMAL}[safe_point]
run_alone_us = 0
"
        ))
        .unwrap();
        assert_eq!(spec.safe_point.run_alone_us(), 0, "0 turns it off");
        let problems = parse_text(&format!(
            "{MINIMAL}[safe_point]
run_alone_us = 1000001
"
        ))
        .unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("run_alone_us = 1000001 is out of range")),
            "{:?}",
            problems.iter().map(|p| &p.message).collect::<Vec<_>>()
        );
    }

    #[test]
    fn hold_ms_needs_together_and_a_sane_range() {
        for (tree, want) in [
            ("hold_ms = 50", "hold_ms applies only to commit = \"together\""),
            ("commit = \"together\"\nhold_ms = 0", "hold_ms = 0 is out of range"),
            (
                "commit = \"together\"\nhold_ms = 60000",
                "hold_ms = 60000 is out of range",
            ),
            ("commit = \"sometimes\"", "unknown variant `sometimes`"),
        ] {
            let problems = parse_text(&format!("{MINIMAL}[tree]\n{tree}\n")).unwrap_err();
            assert!(
                problems.iter().any(|p| p.message.contains(want)),
                "{tree}: {:?}",
                problems.iter().map(|p| &p.message).collect::<Vec<_>>()
            );
        }
    }
}
