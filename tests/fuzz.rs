//! Generative tests of the rule "bad input gets a clear error and loses nothing": whatever a
//! client sends, the daemon answers a Tango status body (or Tornado's 404/405 page), never
//! panics, never answers 500, keeps serving, and writes nothing outside the courselab named.
//!
//! Three layers:
//! - the pure parsers, fed arbitrary JSON, arbitrary bytes, and mutations of Autolab's addJob
//!   body (wrong types, missing fields, huge and negative numbers, odd unicode, NUL bytes,
//!   long strings), and the name checks, fed every kind of name: no panic, a rejection is a
//!   one-line message naming what is wrong, an accepted name stays in its directory on a
//!   real filesystem;
//! - a real in-process server (`support::api::TestServer`), sent raw HTTP/1.1 requests built
//!   from the route table with garbage segments (percent-encoded bytes, dot segments, encoded
//!   slashes, over-long segments), random methods, `Filename`/`imageName` variants and
//!   bodies. Every answer is checked, the server must answer a health request after each,
//!   an accepted upload must be stored byte for byte, links planted in the courselab
//!   (pointing outside) must be neither read nor written through, and a scan of the whole
//!   sandbox (the courselabs directory sits three levels below it) must find nothing
//!   outside a courselab;
//! - schemathesis against the real `tango serve` process and `docs/openapi.yaml`: no 5xx.
//!
//! Case counts are small so the file runs in seconds on a loaded two-core machine. Set
//! `PROPTEST_CASES` to run more (e.g. `PROPTEST_CASES=5000`); every property here uses it.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use support::api::{IMAGE, KEY, TestServer, autolab_job, hello_files, md5_hex};
use tango::api::job_request::{JobRequest, MAX_TIMEOUT_SECS};
use tango::api::status::{METHOD_NOT_ALLOWED_PAGE, NOT_FOUND_PAGE};
use tango::api::{Endpoint, HELLO};
use tango::labs::{Labs, MAX_NAME_LEN, SafeName, check_name};
use tango::store::memory::MemoryStore;

/// The second key the test servers accept.
const KEY2: &str = "second-key";
/// The courselab the fuzzed requests aim at most (opened, with Autolab's hello files).
const LAB: &str = "fuzz-lab";
/// A courselab no fuzzed request names: its files must come through untouched.
const CANARY_LAB: &str = "canary-lab";
/// An output file in `LAB`, for poll to find.
const POLLED: &str = "out.txt";
const POLLED_CONTENT: &[u8] = b"Autodriver: Job exited with status 0\n\xff\x00{\"scores\": {}}\n";

/// `PROPTEST_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default_cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default_cases),
        // Shrinking a server case re-sends requests; keep a failure's report quick.
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Generators

/// Strings meant to hurt: separators, dots, NUL and control characters, percent signs,
/// bidi and zero-width characters, look-alike slashes, astral planes, long runs.
fn odd_string() -> BoxedStrategy<String> {
    prop_oneof![
        4 => path_like(),
        3 => "\\PC{0,30}",
        3 => "[./\\\\%a-z\\x00-\\x1f\\x7f~ -]{0,16}",
        1 => prop::sample::select(vec![
            "", ".", "..", "...", "./x", "../x", "x/..", "/", "//", "\\", "..\\x", "a\0b", "\0",
            "\n", "a\r\nb", "%2e%2e", "%2F", "%00", "\u{202e}gnp.exe", "\u{feff}", "\u{200b}",
            "\u{2215}etc\u{2215}passwd", "\u{ff0f}", "\u{10ffff}", "e\u{301}\u{301}\u{301}",
            "\u{fffd}", "CON", "nul.txt", "~", "-rf", "$(id)", "`id`", "*", "?", "a b",
            "Makefile", "output", "tmp",
        ])
        .prop_map(str::to_string),
        1 => (1usize..3000, prop::sample::select(vec!['a', '.', '/', 'é', '\u{1F600}', '\0']))
            .prop_map(|(n, c)| std::iter::repeat_n(c, n).collect()),
    ]
    .boxed()
}

/// Names built from the pieces of a traversal: dots, separators (real, encoded and
/// look-alike), plain words.
fn path_like() -> BoxedStrategy<String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "..", "..", ".", "/", "/", "\\", "x", "etc", "passwd", "tmp", "output", "%2e", "%2F",
            "%252F", "~", "\u{2215}", "\u{ff0e}", "\0", " ", "ü",
        ]),
        1..7,
    )
    .prop_map(|pieces| pieces.concat())
    .boxed()
}

/// Numbers at the edges: zero, negatives, huge, tiny, fractions.
fn odd_number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON has no NaN or infinity", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(1),
            json!(-0.0),
            json!(0.5),
            json!(1e-300),
            json!(1e300),
            json!(-1e300),
            json!(MAX_TIMEOUT_SECS),
            json!(MAX_TIMEOUT_SECS + 1),
            json!(MAX_TIMEOUT_SECS as f64 + 0.5),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(f64::MAX),
        ]),
    ]
    .boxed()
}

/// The field names of an addJob body, and some that are not.
fn field_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "image", "files", "output_file", "timeout", "callback_url", "notifyURL", "jobName",
            "disable_network", "max_kb", "accessKey", "accessKeyId", "localFile", "destFile",
        ])
        .prop_map(str::to_string),
        1 => odd_string(),
    ]
    .boxed()
}

/// Any JSON value, with the names and numbers above.
fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        odd_number(),
        odd_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Values on the borders of what the typed reading of an addJob body takes: each type a
/// field may meet, zero, negative, a whole number written as a fraction, fractional, the
/// longest timeout and one more, a file with a key of its own or given as a list of its two
/// names (which serde's derived reading of a struct takes), a value nested past the JSON
/// tree's depth limit, alone and as a file's key of its own.
fn edge_values() -> Vec<Value> {
    let deep = (0..130).fold(json!(1), |inner, _| json!([inner]));
    vec![
        Value::Null,
        json!(true),
        json!(false),
        json!(0),
        json!(-1),
        json!(1),
        json!(1.0),
        json!(1.5),
        json!(MAX_TIMEOUT_SECS),
        json!(MAX_TIMEOUT_SECS + 1),
        json!(""),
        json!("x"),
        json!([]),
        json!({}),
        json!([{"localFile": "a", "destFile": "Makefile"}]),
        json!([{"localFile": "a"}]),
        json!([{"localFile": "a", "destFile": "Makefile", "x": 1}]),
        json!([{"localFile": "a", "destFile": "Makefile", "x": deep.clone()}]),
        json!([["a", "Makefile"]]),
        // Past serde_json's depth limit for a tree (128).
        deep,
    ]
}

/// One change to Autolab's addJob body.
#[derive(Debug, Clone)]
enum Mutation {
    /// A top-level field removed.
    Remove(&'static str),
    /// A top-level field set (added if absent).
    Set(&'static str, Value),
    /// `files[i].<field>` set, or removed when `None`.
    SetFile(usize, &'static str, Option<Value>),
}

const TOP_FIELDS: [&str; 11] = [
    "image",
    "files",
    "output_file",
    "timeout",
    "callback_url",
    "notifyURL",
    "jobName",
    "disable_network",
    "max_kb",
    "accessKey",
    "accessKeyId",
];
const REQUIRED: [&str; 5] = ["jobName", "output_file", "timeout", "files", "image"];

fn mutation() -> BoxedStrategy<Mutation> {
    let field = prop::sample::select(TOP_FIELDS.to_vec());
    let value = prop_oneof![
        2 => odd_string().prop_map(Value::String),
        2 => odd_number(),
        1 => any_json(),
    ];
    prop_oneof![
        1 => field.clone().prop_map(Mutation::Remove),
        4 => (field, value.clone()).prop_map(|(f, v)| Mutation::Set(f, v)),
        2 => (
            0usize..3,
            prop::sample::select(vec!["localFile", "destFile"]),
            prop::option::weighted(0.85, value),
        )
            .prop_map(|(i, f, v)| Mutation::SetFile(i, f, v)),
    ]
    .boxed()
}

fn mutated(mutation: &Mutation) -> Value {
    let mut job = autolab_job("course1");
    mutate(&mut job, mutation);
    job
}

/// Applies `mutation` to `job`; a file change where `files[i]` is no longer an object (an
/// earlier change replaced it) changes nothing.
fn mutate(job: &mut Value, mutation: &Mutation) {
    let Some(fields) = job.as_object_mut() else {
        return;
    };
    match mutation {
        Mutation::Remove(field) => {
            fields.remove(*field);
        }
        Mutation::Set(field, value) => {
            fields.insert(field.to_string(), value.clone());
        }
        Mutation::SetFile(i, field, value) => {
            let file = fields
                .get_mut("files")
                .and_then(|files| files.get_mut(*i))
                .and_then(Value::as_object_mut);
            if let Some(file) = file {
                match value {
                    Some(value) => file.insert(field.to_string(), value.clone()),
                    None => file.remove(*field),
                };
            }
        }
    }
}

/// A rejection as a client reads it: a non-empty line of text, without control
/// characters (it goes into logs, trace lines and Autolab's error page) and of bounded size
/// however large the input.
fn assert_clear(message: &str, input_len: usize) -> Result<(), TestCaseError> {
    prop_assert!(!message.trim().is_empty(), "empty message");
    prop_assert!(
        !message.chars().any(char::is_control),
        "control character in the message {message:?}"
    );
    // Messages quote at most 80 characters of a name (escaped); a JSON number is short.
    prop_assert!(
        message.len() <= 1200,
        "a {input_len}-byte input gave a {}-byte message: {message:.200}",
        message.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 1. The pure parsers

fn timeout_ok(timeout: Option<u64>) -> bool {
    timeout.is_none_or(|t| (1..=MAX_TIMEOUT_SECS).contains(&t))
}

/// Every change of one or two fields of Autolab's body (or of a field no client sends) to a
/// border value, or their removal, each pair in both orders: the typed reading answers only
/// what the tree walk would. Exhaustive, where a random pick would rarely meet, say, `timeout`
/// 0 or a `notifyURL` beside a null `callback_url`.
#[test]
fn add_job_parser_reads_every_border_pair_as_the_tree_walk_does() {
    let changes: Vec<Mutation> = TOP_FIELDS
        .iter()
        .chain(&["unknown"])
        .flat_map(|field| {
            edge_values()
                .into_iter()
                .map(|value| Mutation::Set(field, value))
                .chain([Mutation::Remove(field)])
        })
        .collect();
    let mut typical = 0;
    for first in &changes {
        for second in &changes {
            let mut job = autolab_job("course1");
            mutate(&mut job, first);
            mutate(&mut job, second);
            let body = serde_json::to_vec(&job).expect("serializable");
            typical += usize::from(JobRequest::parse_typical(&body).is_some());
            assert_eq!(
                JobRequest::parse(&body),
                JobRequest::parse_tree(&body),
                "{first:?} then {second:?}"
            );
        }
    }
    // The comparison means something only if the typed reading answered many of them.
    assert!(
        typical > changes.len(),
        "{typical} of {} read typed",
        changes.len().pow(2)
    );
}

/// The border tests change the fields in `TOP_FIELDS`: a field declared in the request and
/// missing there would be read by both readings without any test changing it.
#[test]
fn add_job_parser_tests_change_every_declared_field() {
    let mut declared = JobRequest::JSON_NAMES.to_vec();
    declared.sort_unstable();
    let mut changed = TOP_FIELDS.to_vec();
    changed.sort_unstable();
    assert_eq!(
        declared, changed,
        "TOP_FIELDS and the request's declaration"
    );
}

/// Every change of one field of Autolab's body (or of one of its files) to a border value,
/// or its removal, judged as the random changes are: a slip in what a field means that both
/// readings share (a default, a clamp, a field made optional), which the pair test above
/// cannot see, is found every time rather than by chance. Values past the tree's depth
/// limit are left out: they make the whole body invalid JSON, not the field wrong.
#[test]
fn add_job_parser_judges_every_border_change() {
    // The defaults of the fields Autolab leaves out, which every judgement compares with.
    let base = JobRequest::parse(&serde_json::to_vec(&autolab_job("course1")).unwrap())
        .expect("Autolab's body is read");
    assert_eq!(base.max_kb, None);
    assert_eq!(base.access_key, None);
    assert_eq!(base.access_key_id, None);
    let values: Vec<Value> = edge_values()
        .into_iter()
        .filter(|value| depth(value) < 128)
        .collect();
    let mut changes: Vec<Mutation> = TOP_FIELDS
        .iter()
        .flat_map(|field| {
            values
                .iter()
                .map(|value| Mutation::Set(field, value.clone()))
                .chain([Mutation::Remove(field)])
        })
        .collect();
    for i in 0..3 {
        for field in ["localFile", "destFile"] {
            let file_values = values.iter().cloned().map(Some).chain([None]);
            changes.extend(file_values.map(|value| Mutation::SetFile(i, field, value)));
        }
    }
    for change in &changes {
        if let Err(failure) = judge_change(change) {
            panic!("{change:?}: {failure}");
        }
    }
}

/// How deeply a value nests lists and objects.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

proptest! {
    #![proptest_config(config(400))]

    /// Any bytes at all: an answer, never a panic.
    #[test]
    fn add_job_parser_survives_any_bytes(body in prop::collection::vec(any::<u8>(), 0..400)) {
        match JobRequest::parse(&body) {
            Ok(job) => prop_assert!(timeout_ok(job.timeout)),
            Err(message) => assert_clear(&message, body.len())?,
        }
    }

    /// Any JSON value: a non-object is refused as such; an object is read or refused with a
    /// message naming a field.
    #[test]
    fn add_job_parser_survives_any_json(value in any_json()) {
        let body = serde_json::to_vec(&value).expect("serializable");
        match JobRequest::parse(&body) {
            Ok(job) => {
                prop_assert!(value.is_object());
                prop_assert!(timeout_ok(job.timeout));
            }
            Err(message) => {
                assert_clear(&message, body.len())?;
                if value.is_object() {
                    let names_a_field = TOP_FIELDS.iter().chain(&["localFile", "destFile"])
                        .any(|f| message.contains(f));
                    prop_assert!(names_a_field, "{message}");
                } else {
                    prop_assert!(message.starts_with("The addJob body must be a JSON object, not "), "{message}");
                }
            }
        }
    }

    /// One change to Autolab's body: exactly the changed field decides the answer.
    #[test]
    fn add_job_parser_judges_the_changed_field(mutation in mutation()) {
        judge_change(&mutation)?;
    }

    /// Two readings, one answer: the typed reading of Autolab's usual shape answers only
    /// what the tree walk would, on Autolab's body changed in up to four places, on any JSON
    /// value, and on a body with a field given twice.
    #[test]
    fn add_job_parser_reads_as_the_tree_walk_does(
        mutations in prop::collection::vec(mutation(), 0..4),
        value in any_json(),
        (twice, again) in (prop::sample::select(TOP_FIELDS.to_vec()), any_json()),
    ) {
        let mut job = autolab_job("course1");
        for mutation in &mutations {
            mutate(&mut job, mutation);
        }
        let text = serde_json::to_string(&job).expect("serializable");
        let doubled = format!("{{{}:{},{}", json!(twice), again, &text[1..]);
        for body in [text.into_bytes(), serde_json::to_vec(&value).expect("serializable"), doubled.into_bytes()] {
            prop_assert_eq!(
                JobRequest::parse(&body),
                JobRequest::parse_tree(&body),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    /// Number literals serde never builds from a value: out of range, tiny, huge integers.
    #[test]
    fn add_job_parser_reads_any_number_literal(
        literal in prop_oneof![
            prop::sample::select(vec![
                "1e400", "-1e400", "1e-400", "-0", "-0.0", "0.0000001", "604800.0000001",
                "18446744073709551616", "-9223372036854775809", "99999999999999999999999999",
                "1E3", "1e+2", "NaN", "Infinity", "-", "0x10", "01", "1.", ".5",
            ]).prop_map(str::to_string),
            "-?[0-9]{1,40}(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?",
        ],
        field in prop::sample::select(vec!["timeout", "max_kb"]),
    ) {
        let text = serde_json::to_string(&autolab_job("course1")).unwrap();
        let text = if field == "timeout" {
            text.replace("\"timeout\":180", &format!("\"timeout\":{literal}"))
        } else {
            text.replace("\"timeout\":180", &format!("\"timeout\":180,\"max_kb\":{literal}"))
        };
        match JobRequest::parse(text.as_bytes()) {
            Ok(job) => prop_assert!(timeout_ok(job.timeout), "{literal}: {:?}", job.timeout),
            Err(message) => {
                assert_clear(&message, text.len())?;
                prop_assert!(
                    message.starts_with("Invalid JSON in the addJob body: ")
                        || message.starts_with("timeout must be at most "),
                    "{literal}: {message}"
                );
            }
        }
    }

    /// Every name a client gives: accepted exactly when it is one plain file name; then, on
    /// a real filesystem, the file it names is directly in its courselab (or its output
    /// directory), whatever the courselab and the key. Refused: a clear message naming the
    /// field.
    #[test]
    fn accepted_names_stay_in_their_courselab(
        key in prop_oneof![Just(KEY.to_string()), "\\PC{0,20}"],
        lab_name in prop_oneof![Just(LAB.to_string()), odd_string()],
        name in odd_string(),
        what in prop::sample::select(vec!["Filename", "localFile", "destFile", "output_file", "image", "output file"]),
    ) {
        let sandbox = tempfile::tempdir().expect("temp dir");
        let root = sandbox.path().join("a/b/courselabs");
        let server = tango::config::ServerConfig {
            courselabs: root.clone(),
            ..Default::default()
        };
        let labs = Labs::new(&server);
        let lab = match labs.courselab(&key, &lab_name) {
            Ok(lab) => lab,
            Err(e) => return assert_clear(&e.to_string(), lab_name.len()).and_then(|()| {
                prop_assert!(e.to_string().starts_with("Invalid courselab "), "{e}");
                Ok(())
            }),
        };
        prop_assert_eq!(lab.dir.parent(), Some(root.as_path()));
        // The key itself is never part of the path, only its tenant hash.
        prop_assert_eq!(
            lab.dir.file_name().map(|n| n.to_string_lossy().into_owned()),
            Some(format!("{}-{lab_name}", Labs::tenant(&key)))
        );

        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && name.len() <= MAX_NAME_LEN
            && !name.chars().any(|c| c == '/' || c == '\\' || c.is_control());
        match SafeName::new(what, &name) {
            Ok(safe) => {
                prop_assert!(plain, "{name:?} was accepted");
                prop_assert_eq!(check_name(&name, MAX_NAME_LEN), Ok(()));
                if name == "output" {
                    // Names the output directory itself: refused when stored (a test in
                    // tests/api.rs), so not created here.
                    return Ok(());
                }
                for (dir, path) in [
                    (lab.dir.clone(), lab.file(&safe)),
                    (labs.output_dir(&lab), labs.output_path(&lab, &safe)),
                ] {
                    prop_assert_eq!(path.parent(), Some(dir.as_path()));
                    prop_assert!(lexically_inside(&path, &dir), "{}", path.display());
                    // And for real: the file lands in that directory, nowhere else.
                    std::fs::create_dir_all(&dir).expect("make the directory");
                    std::fs::write(&path, b"x").expect("write the named file");
                    let real = std::fs::canonicalize(&path).expect("canonical path");
                    let real_dir = std::fs::canonicalize(&dir).expect("canonical directory");
                    prop_assert_eq!(real.parent(), Some(real_dir.as_path()));
                }
                let everything = walk(sandbox.path());
                prop_assert_eq!(everything.len(), 2 + 2 + 3, "{:?}", everything);
            }
            Err(e) => {
                prop_assert!(!plain, "{name:?} was refused: {e}");
                let message = e.to_string();
                assert_clear(&message, name.len())?;
                let prefix = format!("Invalid {what} ");
                prop_assert!(message.starts_with(&prefix), "{message}");
            }
        }
    }
}

/// True when `path`, with `.` and `..` resolved as text, is inside `dir`.
fn lexically_inside(path: &Path, dir: &Path) -> bool {
    let mut resolved = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::CurDir => {}
            other => resolved.push(other),
        }
    }
    resolved.starts_with(dir) && resolved != dir
}

/// Every entry under `dir` (relative paths, not following links), with its size.
fn walk(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                pending.push(path.clone());
            }
            let relative = path.strip_prefix(dir).expect("under dir").to_path_buf();
            found.insert(relative, if meta.is_file() { meta.len() } else { 0 });
        }
    }
    found
}

/// Judges the reading of Autolab's body after one change: exactly the changed field decides
/// the answer.
fn judge_change(mutation: &Mutation) -> Result<(), TestCaseError> {
    let base = JobRequest::parse(&serde_json::to_vec(&autolab_job("course1")).unwrap())
        .expect("Autolab's body is read");
    let job = mutated(mutation);
    let body = serde_json::to_vec(&job).expect("serializable");
    let parsed = JobRequest::parse(&body);
    if let Err(message) = &parsed {
        assert_clear(message, body.len())?;
    }
    match mutation {
        Mutation::Remove(field) => {
            if REQUIRED.contains(field) {
                prop_assert_eq!(parsed.unwrap_err(), format!("'{field}'"));
            } else {
                let read = parsed.expect("an optional field may be missing");
                // Autolab's body holds callback_url and disable_network (false); the other
                // optional fields it leaves out, so that removing them changes nothing.
                let mut expected = base;
                if *field == "callback_url" {
                    expected.notify_url = None;
                }
                prop_assert_eq!(read, expected);
            }
        }
        Mutation::Set(field, value) => judge_set(field, value, parsed, &base)?,
        Mutation::SetFile(i, field, value) => match (value, parsed) {
            (Some(Value::String(s)), Ok(read)) => {
                let file = &read.files[*i];
                let got = if *field == "localFile" {
                    &file.local_file
                } else {
                    &file.dest_file
                };
                prop_assert_eq!(got, s);
            }
            (Some(Value::String(_)), Err(message)) => {
                prop_assert!(false, "a string {field} was refused: {message}");
            }
            (None, parsed) => prop_assert_eq!(parsed.unwrap_err(), format!("'{field}'")),
            (Some(_), parsed) => {
                let message = parsed.expect_err("a non-string file name is refused");
                prop_assert!(
                    message.starts_with(&format!("files[{i}].{field} must be a string, not ")),
                    "{message}"
                );
            }
        },
    }
    Ok(())
}

fn judge_set(
    field: &str,
    value: &Value,
    parsed: Result<JobRequest, String>,
    base: &JobRequest,
) -> Result<(), TestCaseError> {
    let is_string = value.is_string();
    let text = value.as_str().unwrap_or_default().to_string();
    match field {
        "jobName" | "output_file" | "image" => {
            let takes_null = field != "output_file";
            if is_string || (takes_null && value.is_null()) {
                let read = parsed.map_err(|m| TestCaseError::fail(format!("{field}: {m}")))?;
                let got = match field {
                    "jobName" => read.name,
                    "image" => read.image,
                    _ => read.output_file,
                };
                // Kept verbatim: names are checked later, where they are used.
                prop_assert_eq!(got, text);
            } else {
                let message = parsed.expect_err("a wrong type is refused");
                prop_assert!(
                    message.starts_with(&format!("{field} must be a string, not ")),
                    "{message}"
                );
            }
        }
        "timeout" => judge_timeout(value, parsed)?,
        "callback_url" => {
            if is_string || value.is_null() {
                let read = parsed.map_err(TestCaseError::fail)?;
                prop_assert_eq!(read.notify_url, value.as_str().map(str::to_string));
            } else {
                let message = parsed.expect_err("a wrong type is refused");
                prop_assert!(
                    message.starts_with("callback_url must be a string, not "),
                    "{message}"
                );
            }
        }
        // Shadowed by callback_url, which Autolab always sends.
        "notifyURL" | "accessKeyId" => prop_assert_eq!(&parsed.map_err(TestCaseError::fail)?, base),
        "disable_network" => {
            let read = parsed.map_err(TestCaseError::fail)?;
            prop_assert_eq!(read.disable_network, *value == Value::Bool(true));
        }
        "max_kb" => {
            if value.is_number() || value.is_null() {
                let read = parsed.map_err(TestCaseError::fail)?;
                // Negative or under 1 KiB: no cap of the client's; a fraction rounded down.
                let kb = value
                    .as_u64()
                    .or_else(|| value.as_f64().filter(|kb| *kb >= 1.0).map(|kb| kb as u64));
                prop_assert_eq!(read.max_kb, kb, "{}", value);
            } else {
                let message = parsed.expect_err("a wrong type is refused");
                prop_assert!(
                    message.starts_with("max_kb must be a number of KiB, not "),
                    "{message}"
                );
            }
        }
        "accessKey" => {
            if is_string && !text.is_empty() {
                prop_assert_eq!(parsed.unwrap_err(), "'accessKeyId'");
            } else {
                let read = parsed.map_err(TestCaseError::fail)?;
                prop_assert_eq!(read.access_key, None);
            }
        }
        "files" => judge_files(value, parsed)?,
        other => unreachable!("no mutation of {other}"),
    }
    Ok(())
}

/// `timeout` set to `value`: null, 0 or negative is the default, a fraction is rounded up,
/// more than a week is refused, any other type is refused.
fn judge_timeout(value: &Value, parsed: Result<JobRequest, String>) -> Result<(), TestCaseError> {
    match (value, parsed) {
        (Value::Null, parsed) => prop_assert_eq!(parsed.expect("null timeout").timeout, None),
        (Value::Number(n), Ok(read)) => {
            prop_assert!(timeout_ok(read.timeout), "{n} -> {:?}", read.timeout);
            let secs = n.as_f64().expect("a number");
            if secs <= 0.0 {
                prop_assert_eq!(read.timeout, None);
            } else {
                prop_assert_eq!(read.timeout, Some(secs.ceil() as u64));
            }
        }
        (Value::Number(n), Err(message)) => {
            prop_assert!(
                n.as_f64().expect("a number") > MAX_TIMEOUT_SECS as f64,
                "{n}: {message}"
            );
            prop_assert!(message.starts_with("timeout must be at most "), "{message}");
        }
        (_, parsed) => {
            let message = parsed.expect_err("a wrong type is refused");
            prop_assert!(
                message.starts_with("timeout must be a number of seconds, not "),
                "{message}"
            );
        }
    }
    Ok(())
}

/// `files` set to `value`: read when each file is an object with two string names, else
/// refused with a message about the files.
fn judge_files(value: &Value, parsed: Result<JobRequest, String>) -> Result<(), TestCaseError> {
    let well_formed = value.as_array().is_some_and(|files| {
        files.iter().all(|f| {
            f.get("localFile").is_some_and(Value::is_string)
                && f.get("destFile").is_some_and(Value::is_string)
        })
    });
    match parsed {
        Ok(read) => {
            prop_assert!(well_formed, "{value}");
            prop_assert_eq!(read.files.len(), value.as_array().map_or(0, Vec::len));
        }
        Err(message) => {
            prop_assert!(!well_formed, "{value}: {message}");
            prop_assert!(
                message.starts_with("files") || message == "'localFile'" || message == "'destFile'",
                "{message}"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2. A real server, sent anything

/// Bytes allowed in a path as they are; everything else is sent percent-encoded.
const PATH_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@')
    .remove(b'+')
    .remove(b'!')
    .remove(b'$')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':');

/// A path segment as sent (already encoded).
fn segment(usual: &'static [&'static str]) -> BoxedStrategy<String> {
    let usual: Vec<String> = usual.iter().map(|s| s.to_string()).collect();
    prop_oneof![
        // The values a real client sends.
        6 => prop::sample::select(usual),
        // Any text, percent-encoded.
        3 => odd_string().prop_map(|s| utf8_percent_encode(&s, PATH_SAFE).to_string()),
        // Every byte encoded, even the harmless ones (`.` as `%2E`, `/` as `%2F`).
        1 => odd_string().prop_map(|s| s.bytes().map(|b| format!("%{b:02X}")).collect()),
        // Bytes that are not UTF-8, and malformed or double escapes.
        1 => prop::collection::vec(any::<u8>(), 1..12)
            .prop_map(|bytes| bytes.iter().map(|b| format!("%{b:02x}")).collect()),
        1 => prop::sample::select(vec![
            "%", "%%", "%G0", "%2", "%252F", "%252E%252E", "..%2F..%2Fetc", "%2e%2e", "%2E",
            ".", "..", "%00", "%C0%AF", "%E2%80%AE", "%FF%FE", "a%2Fb", "%5C", "%5c..%5c",
        ])
        .prop_map(str::to_string),
        // Over-long.
        1 => (256usize..8000).prop_map(|n| "s".repeat(n)),
    ]
    .boxed()
}

fn key_segment() -> BoxedStrategy<String> {
    prop_oneof![
        6 => Just(KEY.to_string()),
        1 => Just(KEY2.to_string()),
        1 => segment(&["wrong", "test", ""]),
    ]
    .boxed()
}

/// A request path: a route of the table with its segments filled in (and sometimes bent),
/// or something no route matches.
fn request_path() -> BoxedStrategy<(Option<Endpoint>, String)> {
    // The routes that take names and bodies, more often than the rest.
    let endpoint = prop_oneof![
        3 => prop::sample::select(vec![Endpoint::Upload, Endpoint::AddJob, Endpoint::Open, Endpoint::Poll]),
        2 => prop::sample::select(Endpoint::ALL.to_vec()),
    ];
    let filled = (
        endpoint,
        key_segment(),
        segment(&[LAB, LAB, "other-lab", "15213-f24-malloclab"]),
        segment(&["out.txt", "user@x.edu_1_hello_autograde.txt", "missing"]),
        segment(&["0", "1", "2", "7", "999999", "99999999999999999999999"]),
        segment(&[IMAGE, "rhel.img", "rhel", "missing_image"]),
        prop_oneof![
            6 => Just(""),
            1 => prop::sample::select(vec!["drop-slash", "extra", "query", "double-slash"]),
        ],
    )
        .prop_map(|(endpoint, key, lab, out, number, image, bend)| {
            let mut path = endpoint
                .path()
                .replace("{key}", &key)
                .replace("{courselab}", &lab)
                .replace("{outputFile}", &out)
                .replace("{jobId}", &number)
                .replace("{deadJobs}", &number)
                .replace("{num}", &number)
                .replace("{image}", &image);
            match bend {
                "drop-slash" if path.len() > 1 => {
                    path.pop();
                }
                "extra" => path.push_str("x/"),
                "query" => path.push_str("?a=%2F..&b"),
                "double-slash" => path = format!("/{path}"),
                _ => {}
            }
            (Some(endpoint), path)
        });
    // (Not KEY: a courselab named after the key would show it in later answers, rightly.)
    let random = prop::collection::vec(
        segment(&["open", "upload", "addJob", "..", "poll", "jobs"]),
        0..6,
    )
    .prop_map(|segments| (None, format!("/{}", segments.join("/"))));
    prop_oneof![6 => filled, 1 => random].boxed()
}

/// A header value as bytes: text (CR, LF and NUL cannot be sent in a header) or raw bytes
/// that are not UTF-8.
fn header_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec!["hello.c", "autograde-Makefile", "user@x.edu_9_mm.c", "Makefile"])
            .prop_map(|s| s.as_bytes().to_vec()),
        4 => odd_string().prop_map(|s| {
            s.chars()
                .filter(|c| *c == '\t' || !c.is_control())
                .collect::<String>()
                .into_bytes()
        }),
        1 => prop::collection::vec(0x80u8..=0xff, 1..20),
    ]
    .boxed()
}

/// One request.
#[derive(Debug, Clone)]
struct Fuzzed {
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    chunked: bool,
}

fn body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        2 => Just(Vec::new()),
        2 => prop::collection::vec(any::<u8>(), 0..3000),
        3 => Just(serde_json::to_vec(&autolab_job("course1")).unwrap()),
        4 => mutation().prop_map(|m| serde_json::to_vec(&mutated(&m)).unwrap()),
        2 => any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => Just(br#"{"vmms": "localDocker", "cores": 1, "memory": 512}"#.to_vec()),
        // Just over the JSON body limit (1 MiB, `MAX_JSON_BODY`).
        1 => Just(vec![b' '; 1024 * 1024 + 1]),
    ]
    .boxed()
}

fn fuzzed_request() -> BoxedStrategy<Fuzzed> {
    // Mostly the route's own method ("").
    let method = prop_oneof![
        6 => Just(""),
        1 => prop::sample::select(vec![
            "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO",
        ]),
    ];
    let filename_header =
        prop::sample::select(vec!["Filename", "filename", "FILENAME", "fileName"]);
    let headers = (
        prop::option::weighted(0.8, (filename_header, header_value())),
        prop::option::weighted(0.5, header_value()),
        prop::option::weighted(0.5, header_value()),
        prop::option::weighted(
            0.5,
            prop::sample::select(vec![
                "application/x-www-form-urlencoded",
                "application/json",
                "application/octet-stream",
                "multipart/form-data; boundary=x",
                "text/plain; charset=latin1",
                "garbage",
            ]),
        ),
    )
        .prop_map(|(filename, second_filename, image_name, content_type)| {
            let mut headers = Vec::new();
            if let Some((name, value)) = filename {
                headers.push((name.to_string(), value));
                // A repeated header: which one counts must not matter for safety.
                if let Some(second) = second_filename {
                    headers.push(("Filename".to_string(), second));
                }
            }
            if let Some(value) = image_name {
                headers.push(("imageName".to_string(), value));
            }
            if let Some(value) = content_type {
                headers.push(("Content-Type".to_string(), value.as_bytes().to_vec()));
            }
            headers
        });
    (
        request_path(),
        method,
        headers,
        body(),
        prop::bool::weighted(0.15),
    )
        .prop_map(|((endpoint, path), method, headers, body, chunked)| {
            let method = match (method, endpoint) {
                ("", Some(endpoint)) => endpoint.method().to_string(),
                ("", None) => "GET".to_string(),
                (method, _) => method.to_string(),
            };
            Fuzzed {
                method,
                path,
                headers,
                body,
                chunked,
            }
        })
        .boxed()
}

impl Fuzzed {
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: tango\r\nConnection: close\r\nUser-Agent: Ruby\r\n",
            self.method, self.path
        )
        .into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if self.chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for chunk in self.body.chunks(700) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.extend_from_slice(
                format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes(),
            );
            out.extend_from_slice(&self.body);
        }
        out
    }

    /// The `Filename` value the server reads (the first one, trimmed as HTTP trims).
    fn filename(&self) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("filename"))
            .map(|(_, value)| value.trim_ascii())
    }

    /// The path's segments, percent-decoded (when they are UTF-8).
    fn segments(&self) -> Vec<Option<String>> {
        let path = self.path.split('?').next().unwrap_or_default();
        path.split('/')
            .skip(1)
            .map(|s| {
                percent_decode_str(s)
                    .decode_utf8()
                    .ok()
                    .map(|s| s.into_owned())
            })
            .collect()
    }
}

/// An answer read off the socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` on a fresh connection and reads the answer until the server closes it
/// (every request says `Connection: close`). A hang is an error, after a generous wait.
fn exchange(addr: SocketAddr, request: &[u8], head_only: bool) -> Result<Answer, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    // The server may answer (and close) before reading a body it does not want.
    let _ = stream.write_all(request);
    let mut data = Vec::new();
    if let Err(e) = stream.read_to_end(&mut data)
        && data.is_empty()
    {
        return Err(format!("no answer: {e}"));
    }
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(format!(
            "no response head in {:?}",
            String::from_utf8_lossy(&data)
        ));
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &data[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if head_only {
        Vec::new()
    } else if chunked {
        dechunk(rest).ok_or("a truncated chunked body")?
    } else {
        rest.to_vec()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// The sandbox: a temporary directory with the server's courselabs three levels down and
/// a file of its own beside them, which nothing may touch.
struct Sandbox {
    server: TestServer,
    runtime: tokio::runtime::Handle,
    /// Disk checks so far (see [`Sandbox::check_disk`]).
    checks: std::sync::atomic::AtomicUsize,
    root: PathBuf,
    courselabs: PathBuf,
    before: BTreeMap<PathBuf, u64>,
    canary: Vec<(PathBuf, String)>,
}

impl Sandbox {
    async fn start() -> Sandbox {
        let server = TestServer::start_with(Arc::new(MemoryStore::new()), |config| {
            let sandbox = config
                .server
                .courselabs
                .parent()
                .expect("a parent")
                .to_path_buf();
            let deep = sandbox.join("a/b/c/courselabs");
            std::fs::create_dir_all(&deep).expect("deep courselabs");
            std::fs::write(sandbox.join("a/b/keep.txt"), b"do not touch").expect("keep file");
            config.server.courselabs = deep;
        })
        .await;
        let root = server.dir.path().to_path_buf();
        let courselabs = std::path::absolute(&server.app.config.server.courselabs).unwrap();
        let mut sandbox = Sandbox {
            server,
            runtime: tokio::runtime::Handle::current(),
            checks: Default::default(),
            root,
            courselabs,
            before: BTreeMap::new(),
            canary: Vec::new(),
        };
        for lab in [LAB, CANARY_LAB] {
            let opened = sandbox
                .server
                .get_json(&format!("/open/{KEY}/{lab}/"))
                .await;
            assert_eq!(opened["statusId"], 0, "{opened}");
            for (name, content) in hello_files() {
                let answer = sandbox.server.upload(lab, name, content).await;
                assert_eq!(answer["statusId"], 0, "{answer}");
            }
        }
        let canary_dir = sandbox.lab_dir(KEY, CANARY_LAB);
        sandbox.canary = hello_files()
            .iter()
            .map(|(name, content)| (canary_dir.join(name), md5_hex(content)))
            .collect();
        let keep = sandbox.root.join("a/b/keep.txt");
        sandbox
            .canary
            .push((keep.clone(), md5_hex(b"do not touch")));
        // Something for poll to find, and links to the file outside under names the
        // requests use: poll must not read through them, upload must not write through them.
        let lab = sandbox.lab_dir(KEY, LAB);
        std::fs::write(lab.join("output").join(POLLED), POLLED_CONTENT).expect("output file");
        for link in [
            lab.join("output/user@x.edu_1_hello_autograde.txt"),
            lab.join("hello.c"),
        ] {
            std::os::unix::fs::symlink(&keep, link).expect("symlink");
        }
        sandbox.before = sandbox.outside_courselabs();
        sandbox
    }

    fn lab_dir(&self, key: &str, lab: &str) -> PathBuf {
        self.courselabs.join(format!("{}-{lab}", Labs::tenant(key)))
    }

    /// Everything in the sandbox that is not under the courselabs directory.
    fn outside_courselabs(&self) -> BTreeMap<PathBuf, u64> {
        let inside = self
            .courselabs
            .strip_prefix(&self.root)
            .unwrap()
            .to_path_buf();
        walk(&self.root)
            .into_iter()
            .filter(|(path, _)| !path.starts_with(&inside))
            .collect()
    }

    /// Sends one request and checks its answer, the server's health after it, and where an
    /// accepted upload went.
    fn send(&self, request: &Fuzzed) -> Result<(), TestCaseError> {
        let head_only = request.method == "HEAD";
        let answer = exchange(self.server.addr, &request.bytes(), head_only)
            .map_err(|e| TestCaseError::fail(format!("{e} for {request:?}")))?;
        let shown = || {
            format!(
                "{} {} -> {} {:?}",
                request.method,
                request.path.chars().take(200).collect::<String>(),
                answer.status,
                String::from_utf8_lossy(&answer.body)
                    .chars()
                    .take(400)
                    .collect::<String>()
            )
        };
        match answer.status {
            200 => {}
            404 => {
                prop_assert_eq!(
                    answer.header("content-type"),
                    Some("text/html; charset=UTF-8")
                );
                if !head_only {
                    prop_assert_eq!(&answer.body[..], NOT_FOUND_PAGE.as_bytes(), "{}", shown());
                }
                return self.still_serving();
            }
            405 => {
                prop_assert_eq!(
                    answer.header("content-type"),
                    Some("text/html; charset=UTF-8")
                );
                if !head_only {
                    prop_assert_eq!(
                        &answer.body[..],
                        METHOD_NOT_ALLOWED_PAGE.as_bytes(),
                        "{}",
                        shown()
                    );
                }
                return self.still_serving();
            }
            _ => prop_assert!(false, "unexpected status: {}", shown()),
        }
        let content_type = answer.header("content-type").unwrap_or_default();
        if content_type == "text/html; charset=UTF-8" {
            // Only `/` answers text.
            prop_assert!(
                request.path == "/" || request.path.starts_with("/?"),
                "{}",
                shown()
            );
            prop_assert!(head_only || answer.body == HELLO.as_bytes(), "{}", shown());
            return self.still_serving();
        }
        if content_type == "application/octet-stream" {
            // Only poll sends a file, and only a regular file of the output directory (the
            // one there; never what a link points to).
            prop_assert!(request.path.starts_with("/poll/"), "{}", shown());
            prop_assert!(head_only || answer.body == POLLED_CONTENT, "{}", shown());
            return self.still_serving();
        }
        prop_assert_eq!(
            content_type,
            "application/json; charset=UTF-8",
            "{}",
            shown()
        );
        if head_only {
            return self.still_serving();
        }
        let value: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {}", shown())))?;
        let status_id = value["statusId"].as_i64();
        prop_assert!(matches!(status_id, Some(0 | -1)), "statusId: {}", shown());
        let message = match &value["statusMsg"] {
            Value::String(message) => message.clone(),
            // addJob's validation failure: the rejected job's trace.
            Value::Array(lines) if request.path.starts_with("/addJob/") => lines
                .iter()
                .map(|l| l.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| TestCaseError::fail(format!("statusMsg: {}", shown())))?
                .join("; "),
            _ => return Err(TestCaseError::fail(format!("statusMsg: {}", shown()))),
        };
        prop_assert!(!message.trim().is_empty(), "{}", shown());
        prop_assert!(
            !message.contains("Internal error in tango"),
            "a handler panicked: {}",
            shown()
        );
        let body_text = String::from_utf8_lossy(&answer.body);
        prop_assert!(!body_text.contains(KEY), "the key leaked: {}", shown());
        if status_id == Some(0) && request.path.starts_with("/upload/") && request.method == "POST"
        {
            self.check_stored(request)?;
        }
        self.still_serving()
    }

    /// [`Sandbox::send`], then the disk: a case that writes in the wrong place fails
    /// itself (and is shrunk), not the end of the run.
    fn check(&self, request: &Fuzzed) -> Result<(), TestCaseError> {
        self.send(request)?;
        self.check_disk(false)
    }

    /// An upload answered with success is in its courselab, byte for byte.
    fn check_stored(&self, request: &Fuzzed) -> Result<(), TestCaseError> {
        let segments = request.segments();
        let (Some(Some(key)), Some(Some(lab))) = (segments.get(1), segments.get(2)) else {
            return Err(TestCaseError::fail(format!(
                "accepted path {}",
                request.path
            )));
        };
        let name = request
            .filename()
            .and_then(|n| std::str::from_utf8(n).ok())
            .ok_or_else(|| TestCaseError::fail("accepted without a UTF-8 Filename"))?;
        let stored = self.lab_dir(key, lab).join(name);
        let content = std::fs::read(&stored)
            .map_err(|e| TestCaseError::fail(format!("{}: {e}", stored.display())))?;
        prop_assert_eq!(
            md5_hex(&content),
            md5_hex(&request.body),
            "{}",
            stored.display()
        );
        Ok(())
    }

    /// The server still answers a plain request correctly.
    fn still_serving(&self) -> Result<(), TestCaseError> {
        let request =
            format!("GET /info/{KEY}/ HTTP/1.1\r\nHost: tango\r\nConnection: close\r\n\r\n");
        let answer = exchange(self.server.addr, request.as_bytes(), false)
            .map_err(|e| TestCaseError::fail(format!("the server stopped answering: {e}")))?;
        prop_assert_eq!(answer.status, 200);
        let value: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| TestCaseError::fail(format!("info is not JSON: {e}")))?;
        prop_assert_eq!(&value["statusId"], &json!(0), "{}", value);
        Ok(())
    }

    /// Nothing changed outside the courselabs directory; everything inside has the shape
    /// `<tenant>-<courselab>/<file>` (or `.../output/<file>`); no temporary upload was left
    /// behind; the canary courselab is intact; every job recorded (queued or rejected)
    /// points into its own courselab.
    fn check_disk(&self, last: bool) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            self.outside_courselabs(),
            self.before.clone(),
            "files appeared outside"
        );
        let tenants = [Labs::tenant(KEY), Labs::tenant(KEY2)];
        for (path, _) in walk(&self.courselabs) {
            let shown = path.display();
            let parts: Vec<String> = path
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts[0] == "tmp" {
                prop_assert_eq!(parts.len(), 1, "a temporary upload was left: {}", shown);
                continue;
            }
            prop_assert!(
                tenants
                    .iter()
                    .any(|t| parts[0].starts_with(&format!("{t}-"))),
                "not a courselab: {}",
                shown
            );
            match parts.len() {
                1 | 2 => {}
                3 => prop_assert_eq!(&parts[1], "output", "nested: {}", shown),
                _ => prop_assert!(false, "too deep: {}", shown),
            }
        }
        for (path, md5) in &self.canary {
            let content = std::fs::read(path).expect("canary file");
            prop_assert_eq!(&md5_hex(&content), md5, "{} changed", path.display());
        }
        // Listing every job costs more as they pile up (nothing runs them here): after the
        // first few hundred cases, only every 100th check reads them, and the last one.
        let n = self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !last && n >= 400 && !n.is_multiple_of(100) {
            return Ok(());
        }
        let store = &self.server.app.store;
        let jobs = self.runtime.block_on(async {
            let mut jobs = store.live_jobs().await.expect("live jobs");
            jobs.extend(store.dead_jobs().await.expect("dead jobs"));
            jobs
        });
        for job in jobs {
            let output = Path::new(&job.output_file);
            let inputs = job.input.iter().map(|i| Path::new(&i.local_file));
            for path in inputs.clone().chain([output]) {
                prop_assert!(
                    path.components()
                        .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
                    "{}",
                    path.display()
                );
            }
            let output_dir = output.parent().expect("an output directory");
            prop_assert_eq!(
                output_dir.file_name().and_then(|n| n.to_str()),
                Some("output")
            );
            let lab = output_dir.parent().expect("a courselab");
            prop_assert_eq!(lab.parent(), Some(self.courselabs.as_path()), "{:?}", job);
            for input in inputs {
                prop_assert_eq!(input.parent(), Some(lab), "{:?}", job);
            }
        }
        Ok(())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Random requests on every route: each answered as Tango would, the server serving on,
/// and nothing written outside a courselab.
#[test]
fn any_request_gets_a_tango_answer_and_stays_in_its_courselab() {
    let runtime = runtime();
    let sandbox = runtime.block_on(Sandbox::start());
    let mut runner = TestRunner::new(config(300));
    let result = runner.run(&fuzzed_request(), |request| sandbox.check(&request));
    if let Err(e) = result {
        panic!("{e}");
    }
    sandbox.check_disk(true).expect("the disk after the run");
}

/// Autolab's own sequence with a fuzzed name or body at one step: the good steps still
/// work, and the bad one is refused.
#[test]
fn fuzzed_uploads_and_jobs_between_good_ones() {
    let runtime = runtime();
    let sandbox = runtime.block_on(Sandbox::start());
    let mut runner = TestRunner::new(config(150));
    let strategy = (header_value(), body(), mutation());
    let result = runner.run(&strategy, |(filename, content, mutation)| {
        let server = &sandbox.server;
        // Upload under the fuzzed name.
        let upload = Fuzzed {
            method: "POST".into(),
            path: format!("/upload/{KEY}/{LAB}/"),
            headers: vec![("Filename".into(), filename.clone())],
            body: content,
            chunked: false,
        };
        sandbox.send(&upload)?;
        // A good upload and a fuzzed job.
        let good = runtime.block_on(server.upload(LAB, "autograde-Makefile", hello_files()[0].1));
        prop_assert_eq!(&good["statusId"], &json!(0), "{}", good);
        let job = runtime.block_on(server.add_job(LAB, &mutated(&mutation)));
        prop_assert!(job["statusId"].is_i64(), "{}", job);
        // Autolab's job still goes in.
        let ok = runtime.block_on(server.add_job(LAB, &autolab_job("course1")));
        prop_assert_eq!(&ok["statusMsg"], &json!("Job added"), "{}", ok);
        sandbox.check_disk(false)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    sandbox.check_disk(true).expect("the disk after the run");
}

/// A path longer than any URI the HTTP layer takes is refused there (a 4xx, no handler);
/// a huge `Filename` reaches the handler and gets Tango's clear error. The server goes on.
#[test]
fn oversized_paths_and_names_are_refused_and_the_server_goes_on() {
    let runtime = runtime();
    let sandbox = runtime.block_on(Sandbox::start());
    let long_path = format!("/open/{KEY}/{}/", "x".repeat(70_000));
    let request = format!("GET {long_path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let answer =
        exchange(sandbox.server.addr, request.as_bytes(), false).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        (400..500).contains(&answer.status),
        "status {} for a 70 kB path",
        answer.status
    );
    sandbox.still_serving().expect("still serving");

    let long_name = "y".repeat(200_000);
    let request = format!(
        "POST /upload/{KEY}/{LAB}/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\nFilename: {long_name}\r\nContent-Length: 1\r\n\r\nx"
    );
    let answer =
        exchange(sandbox.server.addr, request.as_bytes(), false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer.status, 200);
    let value: Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!(value["statusId"], -1, "{value}");
    let message = value["statusMsg"].as_str().expect("a message");
    assert!(
        message.starts_with("Invalid Filename \"yyyy")
            && message.ends_with("it is 200000 bytes long, more than the 255 allowed"),
        "{message}"
    );
    assert!(message.len() < 300, "{message}");
    sandbox.still_serving().expect("still serving");
    sandbox.check_disk(true).expect("the disk after the run");
}

/// Regression: a huge `timeout` (found by `add_job_parser_judges_the_changed_field`) was
/// queued, then overflowed the worker's deadline arithmetic. addJob now refuses it clearly.
#[test]
fn add_job_refuses_a_timeout_over_a_week() {
    let runtime = runtime();
    let sandbox = runtime.block_on(Sandbox::start());
    for timeout in [json!(1e30), json!(u64::MAX), json!(MAX_TIMEOUT_SECS + 1)] {
        let mut job = autolab_job("course1");
        job["timeout"] = timeout.clone();
        let answer = runtime.block_on(sandbox.server.add_job(LAB, &job));
        assert_eq!(
            answer,
            json!({
                "statusId": -1,
                "statusMsg": format!("timeout must be at most 604800 seconds (a week), not {timeout}"),
            })
        );
    }
    let mut job = autolab_job("course1");
    job["timeout"] = json!(MAX_TIMEOUT_SECS);
    let answer = runtime.block_on(sandbox.server.add_job(LAB, &job));
    assert_eq!(answer["statusMsg"], "Job added", "{answer}");
    let queued = runtime
        .block_on(sandbox.server.app.store.live_jobs())
        .expect("live jobs");
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].timeout, MAX_TIMEOUT_SECS);
}

// ---------------------------------------------------------------------------------------
// 3. schemathesis against the real `tango serve`

/// schemathesis (PyPI; `scripts/test.sh` installs it) generates requests from
/// `docs/openapi.yaml` (its examples, boundary values, fuzzed values and request sequences)
/// and sends them to a real `tango serve` process; no answer may be a 5xx. The key is
/// fixed to the daemon's, so the requests get past the key check; everything else is
/// generated. Examples per operation: 20, or `PROPTEST_CASES / 20` when that is larger.
/// Afterwards the daemon still answers, and nothing was written outside its courselabs,
/// its log and its machines' work directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_in_the_real_daemon() {
    use support::daemon::{Daemon, DaemonOptions, Mode};

    let st = ["st", "schemathesis"]
        .into_iter()
        .find(|name| {
            std::process::Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect(
            "schemathesis is needed for this test: run scripts/test.sh (it installs it) or \
             `python3 -m pip install schemathesis`",
        );
    // Machines (jobs schemathesis gets accepted run `/bin/true` as their autodriver) live
    // in a directory of this test's, under a prefix of its own.
    let work = tempfile::tempdir().expect("work dir");
    let prefix = format!("fuzz{}", std::process::id());
    let daemon = Daemon::start(DaemonOptions {
        mode: Mode::Serve,
        config: format!(
            "[vmms]\nname = \"local\"\nprefix = \"{prefix}\"\n\n[local]\nautodriver = \"/bin/true\"\nwork_dir = \"{}\"\n",
            work.path().display()
        ),
        server_extra: String::new(),
        key: "st-key".into(),
        courselabs: None,
        env: Vec::new(),
    })
    .await;
    let sandbox = daemon.dir.path().to_path_buf();
    let courselabs = daemon
        .courselabs
        .strip_prefix(&sandbox)
        .unwrap()
        .to_path_buf();
    let outside = |tree: BTreeMap<PathBuf, u64>| -> Vec<PathBuf> {
        tree.into_keys()
            .filter(|p| !p.starts_with(&courselabs) && p != Path::new("tango.log"))
            .collect()
    };
    let before = outside(walk(&sandbox));

    // schemathesis keeps caches in its working directory: one of its own.
    let st_dir = tempfile::tempdir().expect("schemathesis dir");
    let st_config = st_dir.path().join("schemathesis.toml");
    std::fs::write(
        &st_config,
        format!("[parameters]\n\"path.key\" = \"{}\"\n", daemon.key),
    )
    .expect("schemathesis config");
    let examples = (cases(400) / 20).max(20);
    let run = tokio::process::Command::new(st)
        .arg("--config-file")
        .arg(&st_config)
        .args([
            "run",
            concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"),
        ])
        .args(["--url", &daemon.url("")])
        .args(["--checks", "not_a_server_error"])
        .args(["--max-examples", &examples.to_string()])
        .args(["--generation-database", "none"])
        // Health checks judge schemathesis's generator (e.g. "too many examples filtered
        // out" for the courselab pattern), not the server; they made runs fail at random.
        .args(["--suppress-health-check", "all"])
        .args(["--request-timeout", "30", "--no-color"])
        .current_dir(st_dir.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis finished within 10 minutes")
        .expect("schemathesis runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{}\n--- daemon log (tail) ---\n{}",
        support::daemon::tail(&said, 150),
        support::daemon::tail(&daemon.log_text(), 40)
    );
    // It did test every operation (a schema it could not read would test none).
    let operations = tango::api::Endpoint::ALL.len();
    assert!(
        said.contains(&format!("Selected: {operations}/{operations}"))
            && said.contains(&format!("Tested: {operations}")),
        "{said}"
    );

    assert!(daemon.exited().is_none(), "the daemon exited");
    let hello = daemon.get_json(&format!("/info/{}/", daemon.key)).await;
    assert_eq!(hello["statusId"], 0, "{hello}");
    assert_eq!(
        outside(walk(&sandbox)),
        before,
        "files appeared outside the courselabs"
    );
    let panicked = daemon.log_text().contains("panicked");
    assert!(
        !panicked,
        "{}",
        support::daemon::tail(&daemon.log_text(), 40)
    );
}
