//! A short fuzz pass on every `cargo test`, over the two parsers that take
//! input pyreload does not control: the spec parser (a file someone wrote)
//! and the control-protocol decoder (whatever connects to the socket).
//!
//! The properties: neither panics on any input; a spec either parses or
//! gets problems whose locations lie inside its text, and each problem
//! renders; a frame either decodes or fails with an error, never reserving
//! more than the frame limit; and whatever decodes encodes back the same.
//!
//! `tests/corpus/` is the regression corpus: every file in it is replayed
//! on each run, whether or not random generation finds it again. Inputs
//! that once broke something go there, with a name that says what.
//! Longer runs: `PROPTEST_CASES=100000 cargo test --bin pyreload fuzz`.

use std::path::Path;

use proptest::prelude::*;

use crate::control::protocol::{read_frame, write_frame, FrameError, Request, Response, MAX_FRAME};
use crate::diagnostic::Problem;
use crate::spec::{self, SpecSource};

const WORKED_SPECS: [&str; 3] = [
    include_str!("../specs/v1-to-v2.toml"),
    include_str!("../specs/v2-to-v3.toml"),
    include_str!("../specs/v3-to-v4.toml"),
];

/// Parses `text` as a spec and checks what a user would see.
fn check_spec(text: &str) {
    let source = SpecSource {
        path: "fuzz.toml".into(),
        text: text.to_string(),
    };
    if let Err(problems) = spec::parse(&source) {
        assert!(!problems.is_empty(), "an error without a problem");
        for p in &problems {
            check_problem(p, text);
        }
    }
}

fn check_problem(p: &Problem, text: &str) {
    assert!(!p.message.is_empty());
    if let Some(loc) = &p.location {
        assert!(
            loc.start <= loc.end && loc.end <= text.len(),
            "{loc:?} outside {} bytes",
            text.len()
        );
        assert!(
            text.is_char_boundary(loc.start) && text.is_char_boundary(loc.end),
            "{loc:?}"
        );
        assert!(loc.line >= 1 && loc.column >= 1, "{loc:?}");
    }
    let rendered = p.render(Some(("fuzz.toml", text)));
    assert!(!rendered.trim().is_empty(), "{p:?} rendered as nothing");
}

/// Decodes `bytes` as a request frame and checks the decoder's contract.
fn check_frame(bytes: &[u8]) {
    match read_frame::<Request>(&mut &bytes[..]) {
        Ok(request) => {
            // What decodes encodes back to a frame that decodes the same.
            let mut again = Vec::new();
            write_frame(&mut again, &request).unwrap();
            let back: Request = read_frame(&mut &again[..]).unwrap();
            assert_eq!(format!("{request:?}"), format!("{back:?}"));
        }
        Err(FrameError::TooLarge(n)) => assert!(n > MAX_FRAME),
        Err(FrameError::Closed | FrameError::Malformed(_) | FrameError::Io(_)) => {}
    }
    // A reply is decoded by the client, and its problem rendered.
    if let Ok(Response::Error(problem)) = read_frame::<Response>(&mut &bytes[..]) {
        let _ = problem.render(None);
        let _ = problem.render(Some(("fuzz.toml", "[update]\n")));
    }
}

/// An edit to a spec's text: where (a fraction of its length), and what.
#[derive(Debug, Clone)]
enum Edit {
    Insert(f64, String),
    Delete(f64, usize),
    Replace(f64, char),
    Truncate(f64),
    DuplicateLine(f64),
}

fn edit() -> impl Strategy<Value = Edit> {
    let token = prop_oneof![
        Just("[".to_string()),
        Just("]]".to_string()),
        Just("\"".to_string()),
        Just("=".to_string()),
        Just("\n".to_string()),
        Just("[[reload]]\n".to_string()),
        Just("[[transform]]\nclass = \"a.B\"\n".to_string()),
        Just("timeout_ms = 18446744073709551615\n".to_string()),
        Just("commit_timeout_ms = -1\n".to_string()),
        Just("'''".to_string()),
        Just("\u{0}".to_string()),
        Just("é".to_string()),
        "[a-z_.]{1,12}",
        any::<String>(),
    ];
    prop_oneof![
        (0.0..1.0f64, token).prop_map(|(at, s)| Edit::Insert(at, s)),
        (0.0..1.0f64, 1..40usize).prop_map(|(at, n)| Edit::Delete(at, n)),
        (0.0..1.0f64, any::<char>()).prop_map(|(at, c)| Edit::Replace(at, c)),
        (0.0..1.0f64).prop_map(Edit::Truncate),
        (0.0..1.0f64).prop_map(Edit::DuplicateLine),
    ]
}

/// The char boundary nearest below a fraction of the text.
fn at(text: &str, fraction: f64) -> usize {
    let mut i = ((text.len() as f64) * fraction) as usize;
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply_edit(text: &mut String, e: &Edit) {
    match e {
        Edit::Insert(f, s) => {
            let i = at(text, *f);
            text.insert_str(i, s);
        }
        Edit::Delete(f, n) => {
            let i = at(text, *f);
            let mut j = (i + n).min(text.len());
            while !text.is_char_boundary(j) {
                j += 1;
            }
            text.replace_range(i..j, "");
        }
        Edit::Replace(f, c) => {
            let i = at(text, *f);
            if let Some(old) = text[i..].chars().next() {
                text.replace_range(i..i + old.len_utf8(), &c.to_string());
            }
        }
        Edit::Truncate(f) => {
            let i = at(text, *f);
            text.truncate(i);
        }
        Edit::DuplicateLine(f) => {
            let i = at(text, *f);
            let start = text[..i].rfind('\n').map_or(0, |n| n + 1);
            let end = text[i..].find('\n').map_or(text.len(), |n| i + n + 1);
            let line = text[start..end].to_string();
            text.insert_str(end, &line);
        }
    }
}

fn valid_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        any::<u32>().prop_map(|protocol| Request::Status { protocol }),
        any::<u32>().prop_map(|protocol| Request::Collect { protocol }),
        (any::<u32>(), any::<String>(), any::<String>(), any::<bool>()).prop_map(
            |(protocol, spec_path, spec_text, dry_run)| Request::Apply {
                protocol,
                spec_path,
                spec_text,
                dry_run
            }
        ),
        (any::<u32>(), any::<bool>(), any::<u64>()).prop_map(|(protocol, dry_run, timeout_ms)| {
            Request::Rollback {
                protocol,
                dry_run,
                timeout_ms,
            }
        }),
    ]
}

proptest! {
    #[test]
    fn any_text_parses_as_a_spec_or_gets_located_problems(text in any::<String>()) {
        check_spec(&text);
    }

    #[test]
    fn edited_worked_specs_parse_or_get_located_problems(
        base in 0..WORKED_SPECS.len(),
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let mut text = WORKED_SPECS[base].to_string();
        for e in &edits {
            apply_edit(&mut text, e);
        }
        check_spec(&text);
    }

    #[test]
    fn any_bytes_decode_as_a_frame_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_frame(&bytes);
    }

    #[test]
    fn damaged_requests_decode_or_fail_cleanly(
        request in valid_request(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &request).unwrap();
        check_frame(&bytes);
        for (i, b) in &flips {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        check_frame(&bytes);
    }

    #[test]
    fn problems_from_a_host_render_whatever_their_locations(
        message in any::<String>(),
        start in any::<usize>(),
        end in any::<usize>(),
        line in any::<usize>(),
        column in any::<usize>(),
        text in any::<String>(),
    ) {
        let p = Problem {
            message,
            location: Some(Box::new(crate::diagnostic::Location { path: "fuzz.toml".into(), start, end, line, column })),
            label: Some("here".into()),
            ..Problem::default()
        };
        let _ = p.render(Some(("fuzz.toml", &text)));
    }
}

/// Every file under `tests/corpus/<kind>/`, and the malformed-spec fixtures.
fn corpus(kind: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut dirs = vec![root.join("corpus").join(kind)];
    if kind == "spec" {
        dirs.push(root.join("fixtures/malformed"));
        dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("specs"));
    }
    let mut files = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    files.sort();
    files
}

#[test]
fn the_spec_corpus_replays() {
    let files = corpus("spec");
    assert!(files.len() >= 40, "only {} spec inputs", files.len());
    for (path, bytes) in files {
        let text = String::from_utf8_lossy(&bytes);
        let outcome = std::panic::catch_unwind(|| check_spec(&text));
        assert!(outcome.is_ok(), "{path} broke the spec parser");
    }
}

#[test]
fn the_frame_corpus_replays() {
    let files = corpus("frames");
    assert!(files.len() >= 10, "only {} frames", files.len());
    for (path, bytes) in files {
        let outcome = std::panic::catch_unwind(|| check_frame(&bytes));
        assert!(outcome.is_ok(), "{path} broke the frame decoder");
    }
}
