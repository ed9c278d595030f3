//! Errors a person can act on: what is wrong, where (file, line, column, the
//! line itself with a caret), and how to fix it.
//!
//! A [`Problem`] is plain data so it can cross the control socket: the host
//! finds that `reload[1].module` names a module that is not loaded, and the
//! client, which has the spec text, draws the snippet.

use std::io::IsTerminal;
use std::ops::Range;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource};
use serde::{Deserialize, Serialize};

/// A place in a text file, as a byte span plus the 1-based line and column
/// people read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub path: String,
    pub start: usize,
    pub end: usize,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// Locates `span` in `text`, which is the content of `path`.
    pub fn in_text(path: &str, text: &str, span: Range<usize>) -> Location {
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let end = floor_char_boundary(text, span.end.clamp(start, text.len()));
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        Location {
            path: path.to_string(),
            start,
            end,
            line,
            column,
        }
    }

    /// Locates a 1-based line and column (as Python reports them) in `text`.
    pub fn at_line_column(path: &str, text: &str, line: usize, column: usize) -> Location {
        let mut offset = 0;
        for (i, l) in text.split_inclusive('\n').enumerate() {
            if i + 1 == line {
                let col_bytes: usize = l.chars().take(column.saturating_sub(1)).map(char::len_utf8).sum();
                let start = offset + col_bytes;
                let end = (start + 1).min(offset + l.trim_end_matches('\n').len()).max(start);
                return Location {
                    path: path.to_string(),
                    start,
                    end,
                    line,
                    column,
                };
            }
            offset += l.len();
        }
        Location {
            path: path.to_string(),
            start: text.len(),
            end: text.len(),
            line,
            column,
        }
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// An error with everything needed to show it well.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub message: String,
    /// Boxed: most problems have none, and it keeps `Result<_, Problem>` small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Box<Location>>,
    /// Text under the caret, e.g. "not loaded in the program".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// The chain of causes, outermost first (e.g. a Python traceback's lines).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<String>,
}

impl Problem {
    pub fn new(message: impl Into<String>) -> Problem {
        Problem {
            message: message.into(),
            ..Problem::default()
        }
    }

    pub fn at(mut self, location: Location, label: impl Into<String>) -> Problem {
        self.location = Some(Box::new(location));
        self.label = Some(label.into());
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Problem {
        self.help = Some(help.into());
        self
    }

    pub fn caused_by(mut self, cause: impl Into<String>) -> Problem {
        self.causes.push(cause.into());
        self
    }

    /// Draws the problem for a terminal. `known` is a file whose text the
    /// caller already has (the spec); other files are read from disk, and if
    /// that fails the location is shown as `path:line:col` alone.
    pub fn render(&self, known: Option<(&str, &str)>) -> String {
        let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let handler = GraphicalReportHandler::new_themed(theme).with_width(100);

        let mut diag = MietteDiagnostic::new(self.message.clone());
        if let Some(help) = &self.help {
            diag = diag.with_help(help.clone());
        }
        let mut out = String::new();
        let source = self.location.as_ref().and_then(|loc| {
            let text = match known {
                Some((path, text)) if path == loc.path.as_str() => Some(text.to_string()),
                _ => std::fs::read_to_string(&loc.path).ok(),
            };
            text.map(|t| (loc, t))
        });
        let rendered = match source {
            Some((loc, text)) => {
                let label = LabeledSpan::new_primary_with_span(self.label.clone(), loc.start..loc.end);
                let report = miette::Report::new(diag.with_labels([label]))
                    .with_source_code(NamedSource::new(loc.path.clone(), text));
                handler.render_report(&mut out, report.as_ref())
            }
            None => {
                if let Some(loc) = &self.location {
                    diag.message = format!("{}\n  --> {}:{}:{}", diag.message, loc.path, loc.line, loc.column);
                }
                handler.render_report(&mut out, &diag)
            }
        };
        if rendered.is_err() {
            out = format!("error: {}\n", self.message);
        }
        match self.causes.as_slice() {
            [] => {}
            [one] => out.push_str(&format!("  caused by: {one}\n")),
            many => {
                out.push_str("  caused by:\n");
                for line in many {
                    out.push_str(&format!("    {line}\n"));
                }
            }
        }
        out
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(loc) = &self.location {
            write!(f, " ({}:{}:{})", loc.path, loc.line, loc.column)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_count_lines_and_columns_from_one() {
        let text = "a = 1\nbb = 2\n";
        let loc = Location::in_text("f", text, 9..10);
        assert_eq!((loc.line, loc.column), (2, 4));
        let loc = Location::at_line_column("f", text, 2, 4);
        assert_eq!((loc.start, loc.end), (9, 10));
    }

    #[test]
    fn rendering_shows_path_line_and_help() {
        let text = "[update]\nnmae = \"x\"\n";
        let p = Problem::new("unknown field `nmae`")
            .at(Location::in_text("spec.toml", text, 9..13), "not a field of [update]")
            .with_help("did you mean `name`?");
        let out = p.render(Some(("spec.toml", text)));
        assert!(out.contains("spec.toml:2:1"), "{out}");
        assert!(out.contains("nmae = \"x\""), "{out}");
        assert!(out.contains("did you mean `name`?"), "{out}");
    }
}
