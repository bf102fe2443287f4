//! The addJob body: Autolab's JSON, read field by field the way Python Tango read it, with
//! a clear message for each way it can be wrong.
//!
//! Python's `convertJobObj` indexed the fields in a fixed order and a missing one raised
//! `KeyError`, whose text (`'timeout'`) became `statusMsg`; we keep that order and that
//! text. Where Python crashed on a wrong type or silently accepted it, we say which field is
//! wrong and why.
//!
//! Autolab's body always has the same shape, and reading it into a JSON tree, then walking
//! the tree, was a ninth of an addJob's instructions: that shape is read straight into
//! typed fields ([`JobRequest::parse_typical`]), and anything else is read by the tree walk
//! ([`JobRequest::parse_tree`]), which alone decides what is refused and with which words.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

/// One input file as the client named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRequest {
    pub local_file: String,
    pub dest_file: String,
}

/// An addJob request, read but not yet checked against the filesystem or the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    /// `jobName`; empty is left for validation ("Missing job.name").
    pub name: String,
    /// `image`; empty is left for validation ("Missing job.vm.image").
    pub image: String,
    pub files: Vec<FileRequest>,
    pub output_file: String,
    /// `timeout` in seconds; `None` (null, 0 or negative) means the configured default.
    pub timeout: Option<u64>,
    /// `callback_url`, or tango-cli's `notifyURL` when that is absent; kept verbatim.
    pub notify_url: Option<String>,
    /// `max_kb`: the client's output cap in KiB.
    pub max_kb: Option<u64>,
    pub disable_network: bool,
    pub access_key_id: Option<String>,
    pub access_key: Option<String>,
}

/// The body in the shape Autolab sends: every field of the type it should have. Any other
/// shape (a field missing, null or of another type, a key given twice, a field of no
/// client's) fails to read here and goes to the tree walk, so that this never decides an
/// answer the tree walk would not. No value is skipped unread: serde_json skips without the
/// depth limit it reads a tree with, so a deep unknown field would pass here and not there.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Typical {
    #[serde(rename = "jobName")]
    name: Option<String>,
    image: Option<String>,
    files: Option<Vec<TypicalFile>>,
    output_file: Option<String>,
    timeout: Option<u64>,
    callback_url: Option<String>,
    /// Looked at only when `callback_url` is absent or null; read (not skipped) for the
    /// depth limit's sake.
    #[serde(rename = "notifyURL")]
    notify_url: Option<Value>,
    max_kb: Option<u64>,
    disable_network: Option<bool>,
    #[serde(rename = "accessKey")]
    access_key: Option<String>,
    #[serde(rename = "accessKeyId")]
    access_key_id: Option<String>,
}

/// One file of [`Typical`]: an object of exactly `localFile` and `destFile`, each once.
struct TypicalFile {
    local_file: String,
    dest_file: String,
}

/// Read by hand: serde's derived reading of a struct also takes a list of its fields' values
/// (`["a.c", "Makefile"]`), which the tree walk refuses.
impl<'de> Deserialize<'de> for TypicalFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TypicalFileVisitor)
    }
}

struct TypicalFileVisitor;

impl<'de> Visitor<'de> for TypicalFileVisitor {
    type Value = TypicalFile;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a {\"localFile\", \"destFile\"} object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TypicalFile, A::Error> {
        let (mut local_file, mut dest_file) = (None, None);
        while let Some(key) = map.next_key::<FileKey>()? {
            let name = match key {
                FileKey::LocalFile => &mut local_file,
                FileKey::DestFile => &mut dest_file,
            };
            if name.is_some() {
                return Err(de::Error::custom("a file's name given twice"));
            }
            *name = Some(map.next_value::<String>()?);
        }
        match (local_file, dest_file) {
            (Some(local_file), Some(dest_file)) => Ok(TypicalFile {
                local_file,
                dest_file,
            }),
            _ => Err(de::Error::custom("a file's name missing")),
        }
    }
}

/// The keys of a file; any other is refused before its value is read (see [`Typical`]).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum FileKey {
    LocalFile,
    DestFile,
}

impl JobRequest {
    /// Reads the body. The error text is the client's `statusMsg`.
    pub fn parse(body: &[u8]) -> Result<JobRequest, String> {
        match Self::parse_typical(body) {
            Some(job) => Ok(job),
            None => Self::parse_tree(body),
        }
    }

    /// Reads a body of Autolab's usual shape without building a JSON tree; `None` for any
    /// other body, which [`parse_tree`](Self::parse_tree) then reads. Where it answers, it
    /// answers what `parse_tree` would (the fuzz tests hold it to that).
    pub fn parse_typical(body: &[u8]) -> Option<JobRequest> {
        // A derived struct also reads a JSON list, field by field in order; the body must be
        // an object.
        if body.trim_ascii_start().first() != Some(&b'{') {
            return None;
        }
        let job: Typical = serde_json::from_slice(body).ok()?;
        let timeout = match job.timeout? {
            0 => None,
            secs if secs <= MAX_TIMEOUT_SECS => Some(secs),
            _ => return None, // refused, in the tree walk's words
        };
        let notify_url = match (job.callback_url, job.notify_url) {
            (Some(url), _) => Some(url),
            (None, None) => None,
            // callback_url null or absent beside a notifyURL: which one counts is the tree
            // walk's to say.
            (None, Some(_)) => return None,
        };
        let (access_key_id, access_key) = match job.access_key {
            Some(key) if !key.is_empty() => (Some(job.access_key_id?), Some(key)),
            _ => (None, None),
        };
        Some(JobRequest {
            name: job.name?,
            image: job.image?,
            files: job
                .files?
                .into_iter()
                .map(|f| FileRequest {
                    local_file: f.local_file,
                    dest_file: f.dest_file,
                })
                .collect(),
            output_file: job.output_file?,
            timeout,
            notify_url,
            max_kb: job.max_kb,
            disable_network: job.disable_network.unwrap_or(false),
            access_key_id,
            access_key,
        })
    }

    /// Reads any body through a JSON tree, field by field in Python's order: the reference
    /// reading, with a message for each way a body can be wrong.
    pub fn parse_tree(body: &[u8]) -> Result<JobRequest, String> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| format!("Invalid JSON in the addJob body: {e}"))?;
        let Value::Object(job) = value else {
            return Err(format!(
                "The addJob body must be a JSON object, not {}",
                kind(&value)
            ));
        };

        let name = optional_text(required(&job, "jobName")?, "jobName")?;
        let output_file = text(required(&job, "output_file")?, "output_file")?;
        let timeout = timeout(required(&job, "timeout")?)?;
        let notify_url = match job.get("callback_url") {
            Some(url) => nullable_text(url, "callback_url")?,
            None => match job.get("notifyURL") {
                Some(url) => nullable_text(url, "notifyURL")?,
                None => None,
            },
        };
        let files = files(required(&job, "files")?)?;
        let image = optional_text(required(&job, "image")?, "image")?;

        // Legacy per-job EC2 credentials, used only when accessKey is a non-empty string.
        let (access_key_id, access_key) = match job.get("accessKey") {
            Some(Value::String(key)) if !key.is_empty() => {
                let id = text(required(&job, "accessKeyId")?, "accessKeyId")?;
                (Some(id), Some(key.clone()))
            }
            _ => (None, None),
        };

        // Honoured only when a real boolean, as Python did.
        let disable_network = matches!(job.get("disable_network"), Some(Value::Bool(true)));

        let max_kb = match job.get("max_kb") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => {
                if let Some(kb) = n.as_u64() {
                    Some(kb)
                } else if n.as_i64().is_some() {
                    None // negative: no cap of the client's
                } else {
                    match n.as_f64() {
                        Some(kb) if kb >= 1.0 => Some(kb.min(u64::MAX as f64) as u64),
                        _ => None,
                    }
                }
            }
            Some(other) => {
                return Err(format!(
                    "max_kb must be a number of KiB, not {}",
                    kind(other)
                ));
            }
        };

        Ok(JobRequest {
            name,
            image,
            files,
            output_file,
            timeout,
            notify_url,
            max_kb,
            disable_network,
            access_key_id,
            access_key,
        })
    }
}

/// A field Python indexed without a default: missing, it answered the `KeyError` text.
fn required<'a>(job: &'a Map<String, Value>, field: &str) -> Result<&'a Value, String> {
    job.get(field).ok_or_else(|| format!("'{field}'"))
}

fn text(value: &Value, field: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("{field} must be a string, not {}", kind(other))),
    }
}

/// A string where null means "not given" (left empty for validation to report).
fn optional_text(value: &Value, field: &str) -> Result<String, String> {
    match value {
        Value::Null => Ok(String::new()),
        other => text(other, field),
    }
}

fn nullable_text(value: &Value, field: &str) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        other => text(other, field).map(Some),
    }
}

/// The longest `timeout` a job may ask for: a week. Python took any number; a huge one
/// (`1e30`, `18446744073709551615`) was accepted here and then overflowed the worker's and
/// the local backend's deadline arithmetic (`Duration` + margin): the worker panicked and
/// the job ended in an internal error instead of being refused. Autolab allows at most 900.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// Python: `timeout` null, 0 or negative means the default.
fn timeout(value: &Value) -> Result<Option<u64>, String> {
    let too_long =
        || format!("timeout must be at most {MAX_TIMEOUT_SECS} seconds (a week), not {value}");
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => {
            if let Some(secs) = n.as_u64() {
                if secs > MAX_TIMEOUT_SECS {
                    return Err(too_long());
                }
                Ok((secs > 0).then_some(secs))
            } else if n.as_i64().is_some() {
                Ok(None)
            } else {
                match n.as_f64() {
                    Some(secs) if secs > MAX_TIMEOUT_SECS as f64 => Err(too_long()),
                    Some(secs) if secs > 0.0 => Ok(Some(secs.ceil() as u64)),
                    _ => Ok(None),
                }
            }
        }
        other => Err(format!(
            "timeout must be a number of seconds, not {}",
            kind(other)
        )),
    }
}

fn files(value: &Value) -> Result<Vec<FileRequest>, String> {
    let Value::Array(entries) = value else {
        return Err(format!(
            "files must be a list of {{\"localFile\", \"destFile\"}} objects, not {}",
            kind(value)
        ));
    };
    let mut files = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let Value::Object(file) = entry else {
            return Err(format!(
                "files[{i}] must be a {{\"localFile\", \"destFile\"}} object, not {}",
                kind(entry)
            ));
        };
        let local_file = text(
            required(file, "localFile")?,
            &format!("files[{i}].localFile"),
        )?;
        let dest_file = text(required(file, "destFile")?, &format!("files[{i}].destFile"))?;
        files.push(FileRequest {
            local_file,
            dest_file,
        });
    }
    Ok(files)
}

/// A JSON value's type, as a message names it.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTOLAB: &str = r#"{"image":"autograding_image",
        "files":[{"localFile":"user@x.edu_1_hello.c","destFile":"hello.c"},
                 {"localFile":"autograde-Makefile","destFile":"Makefile"}],
        "output_file":"user@x.edu_1_hello_autograde.txt","timeout":180,
        "callback_url":"https://a.example/x?dave=A&submission_id=7",
        "jobName":"course1_hello_1_user@x.edu","disable_network":false}"#;

    #[test]
    fn reads_autolabs_body() {
        let job = JobRequest::parse(AUTOLAB.as_bytes()).unwrap();
        assert_eq!(job.name, "course1_hello_1_user@x.edu");
        assert_eq!(job.image, "autograding_image");
        assert_eq!(job.output_file, "user@x.edu_1_hello_autograde.txt");
        assert_eq!(job.timeout, Some(180));
        assert_eq!(
            job.notify_url.as_deref(),
            Some("https://a.example/x?dave=A&submission_id=7")
        );
        assert_eq!(job.files.len(), 2);
        assert_eq!(job.files[1].dest_file, "Makefile");
        assert!(!job.disable_network);
        assert_eq!(job.max_kb, None);
        assert_eq!(job.access_key, None);
    }

    #[test]
    fn autolabs_body_is_read_without_a_tree_and_read_the_same() {
        let typical = JobRequest::parse_typical(AUTOLAB.as_bytes()).expect("the usual shape");
        assert_eq!(Ok(typical), JobRequest::parse_tree(AUTOLAB.as_bytes()));
        // With every optional field, each of the type it should have.
        let mut full: Map<String, Value> = serde_json::from_str(AUTOLAB).unwrap();
        full.insert("max_kb".into(), 64.into());
        full.insert("accessKey".into(), "secret".into());
        full.insert("accessKeyId".into(), "AKIA".into());
        full.insert("notifyURL".into(), 5.into()); // ignored beside callback_url
        let body = serde_json::to_vec(&full).unwrap();
        let typical = JobRequest::parse_typical(&body).expect("the usual shape");
        assert_eq!(Ok(typical), JobRequest::parse_tree(&body));
    }

    #[test]
    fn other_shapes_are_left_to_the_tree_walk() {
        // A list that a derived struct would read field by field.
        let list = br#"["n", "img", [], "out", 5, null, null, null, false, null, null]"#;
        assert!(JobRequest::parse_typical(list).is_none());
        for body in [
            with("jobName", "null"),
            with("timeout", "null"),
            with("timeout", "1.5"),
            with("timeout", "604801"),
            with("max_kb", "-1"),
            with("disable_network", "\"true\""),
            with("accessKey", "\"secret\""),
            without("files"),
            // A file as a list of its names, which a derived struct would read.
            with("files", r#"[["a.c", "Makefile"]]"#),
        ] {
            assert!(
                JobRequest::parse_typical(&body).is_none(),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        // Deeper than the tree's depth limit, in a field no client sends, or in one that is
        // otherwise ignored: refused by both.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for field in ["x", "notifyURL"] {
            let body = format!("{{\"{field}\":{deep},{}", &AUTOLAB.trim_start()[1..]);
            let body = body.into_bytes();
            assert!(JobRequest::parse_typical(&body).is_none(), "{field}");
            assert!(JobRequest::parse(&body).is_err(), "{field}");
        }
        // A key given twice: the last one counts, as in the tree.
        let twice =
            br#"{"image":"a","image":"b","files":[],"output_file":"o","timeout":5,"jobName":"j"}"#;
        assert!(JobRequest::parse_typical(twice).is_none());
        assert_eq!(JobRequest::parse(twice).unwrap().image, "b");
    }

    fn with(field: &str, value: &str) -> Vec<u8> {
        let mut job: Map<String, Value> = serde_json::from_str(AUTOLAB).unwrap();
        job.insert(field.into(), serde_json::from_str(value).unwrap());
        serde_json::to_vec(&job).unwrap()
    }

    fn without(field: &str) -> Vec<u8> {
        let mut job: Map<String, Value> = serde_json::from_str(AUTOLAB).unwrap();
        job.remove(field);
        serde_json::to_vec(&job).unwrap()
    }

    #[test]
    fn missing_fields_answer_pythons_key_error_text() {
        for field in ["jobName", "output_file", "timeout", "files", "image"] {
            assert_eq!(
                JobRequest::parse(&without(field)).unwrap_err(),
                format!("'{field}'")
            );
        }
        // Optional ones.
        for field in ["callback_url", "disable_network"] {
            assert!(JobRequest::parse(&without(field)).is_ok(), "{field}");
        }
    }

    #[test]
    fn timeout_zero_negative_or_null_means_the_default() {
        for value in ["0", "-5", "null", "0.0"] {
            assert_eq!(
                JobRequest::parse(&with("timeout", value)).unwrap().timeout,
                None
            );
        }
        assert_eq!(
            JobRequest::parse(&with("timeout", "1.5")).unwrap().timeout,
            Some(2)
        );
        assert_eq!(
            JobRequest::parse(&with("timeout", "\"180\"")).unwrap_err(),
            "timeout must be a number of seconds, not a string"
        );
    }

    #[test]
    fn a_huge_timeout_is_refused_not_overflowed_later() {
        assert_eq!(
            JobRequest::parse(&with("timeout", "604800"))
                .unwrap()
                .timeout,
            Some(MAX_TIMEOUT_SECS)
        );
        for (value, shown) in [
            ("604801", "604801"),
            ("18446744073709551615", "18446744073709551615"),
            ("1e30", "1e+30"),
            ("604800.5", "604800.5"),
        ] {
            assert_eq!(
                JobRequest::parse(&with("timeout", value)).unwrap_err(),
                format!("timeout must be at most 604800 seconds (a week), not {shown}"),
                "{value}"
            );
        }
    }

    #[test]
    fn wrong_types_name_the_field() {
        let cases = [
            ("jobName", "5", "jobName must be a string, not a number"),
            (
                "output_file",
                "null",
                "output_file must be a string, not null",
            ),
            ("image", "[]", "image must be a string, not a list"),
            (
                "files",
                "{}",
                "files must be a list of {\"localFile\", \"destFile\"} objects, not an object",
            ),
            (
                "files",
                "[\"a\"]",
                "files[0] must be a {\"localFile\", \"destFile\"} object, not a string",
            ),
            (
                "files",
                "[[\"a.c\", \"Makefile\"]]",
                "files[0] must be a {\"localFile\", \"destFile\"} object, not a list",
            ),
            (
                "files",
                "[{\"localFile\": 1, \"destFile\": \"Makefile\"}]",
                "files[0].localFile must be a string, not a number",
            ),
            (
                "callback_url",
                "true",
                "callback_url must be a string, not a boolean",
            ),
            (
                "max_kb",
                "\"big\"",
                "max_kb must be a number of KiB, not a string",
            ),
        ];
        for (field, value, message) in cases {
            assert_eq!(
                JobRequest::parse(&with(field, value)).unwrap_err(),
                message,
                "{field} = {value}"
            );
        }
        assert_eq!(
            JobRequest::parse(&with("files", "[{\"destFile\": \"Makefile\"}]")).unwrap_err(),
            "'localFile'"
        );
    }

    #[test]
    fn invalid_json_and_non_objects_are_refused() {
        let err = JobRequest::parse(b"").unwrap_err();
        assert!(
            err.starts_with("Invalid JSON in the addJob body: "),
            "{err}"
        );
        let err = JobRequest::parse(b"{\"image\":").unwrap_err();
        assert!(
            err.starts_with("Invalid JSON in the addJob body: "),
            "{err}"
        );
        assert_eq!(
            JobRequest::parse(b"[1]").unwrap_err(),
            "The addJob body must be a JSON object, not a list"
        );
    }

    #[test]
    fn callback_falls_back_to_notify_url_and_stays_verbatim() {
        let body = {
            let mut job: Map<String, Value> = serde_json::from_str(AUTOLAB).unwrap();
            job.remove("callback_url");
            job.insert("notifyURL".into(), Value::String("http://cli/x".into()));
            serde_json::to_vec(&job).unwrap()
        };
        assert_eq!(
            JobRequest::parse(&body).unwrap().notify_url.as_deref(),
            Some("http://cli/x")
        );
        assert_eq!(
            JobRequest::parse(&with("callback_url", "\"\""))
                .unwrap()
                .notify_url
                .as_deref(),
            Some("")
        );
    }

    #[test]
    fn disable_network_only_when_a_boolean() {
        assert!(
            JobRequest::parse(&with("disable_network", "true"))
                .unwrap()
                .disable_network
        );
        assert!(
            !JobRequest::parse(&with("disable_network", "\"true\""))
                .unwrap()
                .disable_network
        );
    }

    #[test]
    fn access_keys_only_with_a_non_empty_access_key() {
        let job = JobRequest::parse(&with("accessKey", "\"\"")).unwrap();
        assert_eq!(job.access_key, None);
        assert_eq!(
            JobRequest::parse(&with("accessKey", "\"secret\"")).unwrap_err(),
            "'accessKeyId'"
        );
        let mut both: Map<String, Value> = serde_json::from_str(AUTOLAB).unwrap();
        both.insert("accessKey".into(), "secret".into());
        both.insert("accessKeyId".into(), "AKIA".into());
        let job = JobRequest::parse(&serde_json::to_vec(&both).unwrap()).unwrap();
        assert_eq!(job.access_key.as_deref(), Some("secret"));
        assert_eq!(job.access_key_id.as_deref(), Some("AKIA"));
    }

    #[test]
    fn max_kb_is_read() {
        assert_eq!(
            JobRequest::parse(&with("max_kb", "64")).unwrap().max_kb,
            Some(64)
        );
        assert_eq!(
            JobRequest::parse(&with("max_kb", "-1")).unwrap().max_kb,
            None
        );
    }
}
