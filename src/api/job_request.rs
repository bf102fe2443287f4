//! The addJob body: Autolab's JSON, read field by field the way Python Tango read it, with
//! a clear message for each way it can be wrong.
//!
//! Python's `convertJobObj` indexed the fields in a fixed order and a missing one raised
//! `KeyError`, whose text (`'timeout'`) became `statusMsg`; we keep that order and that
//! text. Where Python crashed on a wrong type or silently accepted it, we say which field is
//! wrong and why.
//!
//! Autolab's body always has the same shape, and reading it into a JSON tree, then walking
//! the tree, costs about a ninth of an addJob's instructions: that shape is read straight into
//! typed fields ([`JobRequest::parse_typical`]), and anything else is read through a JSON
//! tree ([`JobRequest::parse_tree`]), which alone decides what is refused and with which
//! words. Both read the fields declared once, below ([`JobRequest`]): a field's JSON names,
//! its kind (its type, clamping and messages, in `kinds.rs`) and what its absence means.
//! `fields.rs` turns that declaration into the struct and both readings.

mod fields;
mod kinds;

use serde_json::Value;

use fields::job_request_fields;
pub use kinds::MAX_TIMEOUT_SECS;
use kinds::{Files, Flag, Kib, NonEmptyText, NullableText, Seconds, Text, TextOrNull};

/// One input file as the client named it (read from the body by the `Files` kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRequest {
    pub local_file: String,
    pub dest_file: String,
}

// The one list of a job's request fields, in Python's order (the order a body's faults are
// found in): both readings are made from it (`fields.rs` says how). A field added here is
// read by both; `build_job` (in `jobs.rs`) takes it on to the `Job` if the job needs it,
// and `tests/fuzz.rs` asks for it in its list of fields to change.
job_request_fields! {
    /// An addJob request, read but not yet checked against the filesystem or the backend.
    pub struct JobRequest {
        /// `jobName`; empty is left for validation ("Missing job.name").
        name: String = "jobName" as TextOrNull, required;
        /// The output file's name in the courselab's output directory.
        output_file: String = "output_file" as Text, required;
        /// `timeout` in seconds; `None` (null, 0 or negative) means the configured default.
        timeout: Option<u64> = "timeout" as Seconds, required;
        /// `callback_url`, or tango-cli's `notifyURL` when that is absent; kept verbatim.
        notify_url: Option<String> = "callback_url" | "notifyURL" as NullableText, default(None);
        /// The input files: uploaded names (`localFile`) and names in the machine.
        files: Vec<FileRequest> = "files" as Files, required;
        /// `image`; empty is left for validation ("Missing job.vm.image").
        image: String = "image" as TextOrNull, required;
        /// Legacy per-job EC2 credentials, used only when `accessKey` is a non-empty string.
        access_key: Option<String> = "accessKey" as NonEmptyText, default(None);
        access_key_id: Option<String> = "accessKeyId" as Text, required_if(access_key.is_some());
        /// Run without network.
        disable_network: bool = "disable_network" as Flag, default(false);
        /// `max_kb`: the client's output cap in KiB.
        max_kb: Option<u64> = "max_kb" as Kib, default(None);
    }
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
        let typical: Typical = serde_json::from_slice(body).ok()?;
        Self::read_typical(typical)
    }

    /// Reads any body through a JSON tree, field by field in Python's order: the reference
    /// reading, with a message for each way a body can be wrong.
    pub fn parse_tree(body: &[u8]) -> Result<JobRequest, String> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| format!("Invalid JSON in the addJob body: {e}"))?;
        let Value::Object(job) = value else {
            return Err(format!(
                "The addJob body must be a JSON object, not {}",
                kinds::json_type(&value)
            ));
        };
        Self::read_tree(&job)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

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
        let body = serde_json::to_vec(&full).unwrap();
        let typical = JobRequest::parse_typical(&body).expect("the usual shape");
        assert_eq!(Ok(typical), JobRequest::parse_tree(&body));
        // With tango-cli's name for callback_url.
        let mut cli = full;
        let url = cli.remove("callback_url").unwrap();
        cli.insert("notifyURL".into(), url);
        let body = serde_json::to_vec(&cli).unwrap();
        let typical = JobRequest::parse_typical(&body).expect("notifyURL");
        assert_eq!(Ok(typical), JobRequest::parse_tree(&body));
    }

    #[test]
    fn other_shapes_are_left_to_the_tree_walk() {
        // A list that a derived struct would read field by field.
        let list = br#"["n", "img", [], "out", 5, null, null, null, false, null, null]"#;
        assert!(JobRequest::parse_typical(list).is_none());
        // Null, which some kinds read otherwise than a missing field.
        let nulls = JobRequest::JSON_NAMES.iter().map(|name| with(name, "null"));
        for body in nulls.chain([
            with("timeout", "1.5"),
            with("timeout", "604801"),
            with("max_kb", "-1"),
            with("disable_network", "\"true\""),
            with("accessKey", "\"secret\""),
            without("files"),
            // A file as a list of its names, which a derived struct would read.
            with("files", r#"[["a.c", "Makefile"]]"#),
            // Both spellings of the callback: which one counts is the tree reading's to say.
            with("notifyURL", "5"),
        ]) {
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
        // Beside callback_url, notifyURL is not looked at.
        assert_eq!(
            JobRequest::parse(&with("notifyURL", "5")),
            JobRequest::parse(AUTOLAB.as_bytes())
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
