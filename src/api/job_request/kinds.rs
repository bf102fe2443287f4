//! The kinds of value a field of a job's request holds: for each, the JSON type Autolab
//! sends, how a value of it is taken or clamped, and what a value of any other type means
//! (Python's leniency where it had one, a message naming the field where it crashed or
//! accepted nonsense). Both readings of a body read every field through its kind.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::FileRequest;
use super::fields::key_error;

/// A kind of field value. The typed reading meets only `Typed` values (it leaves a body
/// with any other to the tree reading); the tree reading meets any value, and hands one that
/// serde reads as `Typed` to [`Kind::typed`], as the typed reading would.
pub trait Kind {
    /// The type Autolab sends, as serde reads it from the body.
    type Typed: DeserializeOwned;
    /// What the field becomes in the request.
    type Out;
    /// Reads a value of the usual type; an error is a refusal, with the client's `statusMsg`.
    fn typed(value: Self::Typed, field: &str) -> Result<Self::Out, String>;
    /// Reads a value of any other type, null included.
    fn other(value: &Value, field: &str) -> Result<Self::Out, String>;
}

/// A string, and nothing else.
pub struct Text;

impl Kind for Text {
    type Typed = String;
    type Out = String;
    fn typed(value: String, _: &str) -> Result<String, String> {
        Ok(value)
    }
    fn other(value: &Value, field: &str) -> Result<String, String> {
        Err(format!(
            "{field} must be a string, not {}",
            json_type(value)
        ))
    }
}

/// A string where null means "not given", left empty for validation to report.
pub struct TextOrNull;

impl Kind for TextOrNull {
    type Typed = String;
    type Out = String;
    fn typed(value: String, _: &str) -> Result<String, String> {
        Ok(value)
    }
    fn other(value: &Value, field: &str) -> Result<String, String> {
        match value {
            Value::Null => Ok(String::new()),
            other => Text::other(other, field),
        }
    }
}

/// A string or null (`None`).
pub struct NullableText;

impl Kind for NullableText {
    type Typed = String;
    type Out = Option<String>;
    fn typed(value: String, _: &str) -> Result<Option<String>, String> {
        Ok(Some(value))
    }
    fn other(value: &Value, field: &str) -> Result<Option<String>, String> {
        match value {
            Value::Null => Ok(None),
            other => Text::other(other, field).map(Some),
        }
    }
}

/// A string that counts only when non-empty; any other value is ignored, as Python did.
pub struct NonEmptyText;

impl Kind for NonEmptyText {
    type Typed = String;
    type Out = Option<String>;
    fn typed(value: String, _: &str) -> Result<Option<String>, String> {
        Ok((!value.is_empty()).then_some(value))
    }
    fn other(_: &Value, _: &str) -> Result<Option<String>, String> {
        Ok(None)
    }
}

/// A boolean, honoured only when a real `true`, as Python did; any other value is false.
pub struct Flag;

impl Kind for Flag {
    type Typed = bool;
    type Out = bool;
    fn typed(value: bool, _: &str) -> Result<bool, String> {
        Ok(value)
    }
    fn other(_: &Value, _: &str) -> Result<bool, String> {
        Ok(false)
    }
}

/// The longest `timeout` a job may ask for: a week. Python took any number; a huge one
/// (`1e30`, `18446744073709551615`) was accepted here and then overflowed the worker's and
/// the local backend's deadline arithmetic (`Duration` + margin): the worker panicked and
/// the job ended in an internal error instead of being refused. Autolab allows at most 900.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// A number of seconds, at most [`MAX_TIMEOUT_SECS`]; as in Python, null, 0 or negative
/// means the configured default (`None`), and a fraction is rounded up.
pub struct Seconds;

impl Seconds {
    fn too_long(field: &str, shown: impl std::fmt::Display) -> String {
        format!("{field} must be at most {MAX_TIMEOUT_SECS} seconds (a week), not {shown}")
    }
}

impl Kind for Seconds {
    type Typed = u64;
    type Out = Option<u64>;
    // Inlined into the typed reading, which reads a timeout from every addJob.
    #[inline]
    fn typed(secs: u64, field: &str) -> Result<Option<u64>, String> {
        if secs > MAX_TIMEOUT_SECS {
            return Err(Self::too_long(field, secs));
        }
        Ok((secs > 0).then_some(secs))
    }
    fn other(value: &Value, field: &str) -> Result<Option<u64>, String> {
        match value {
            Value::Null => Ok(None),
            Value::Number(n) => {
                if let Some(secs) = n.as_u64() {
                    Self::typed(secs, field)
                } else if n.as_i64().is_some() {
                    Ok(None)
                } else {
                    match n.as_f64() {
                        Some(secs) if secs > MAX_TIMEOUT_SECS as f64 => {
                            Err(Self::too_long(field, value))
                        }
                        Some(secs) if secs > 0.0 => Ok(Some(secs.ceil() as u64)),
                        _ => Ok(None),
                    }
                }
            }
            other => Err(format!(
                "{field} must be a number of seconds, not {}",
                json_type(other)
            )),
        }
    }
}

/// A number of KiB, or null; a negative one means no cap of the client's, a fraction is
/// rounded down (a cap under 1 KiB is none).
pub struct Kib;

impl Kind for Kib {
    type Typed = u64;
    type Out = Option<u64>;
    fn typed(kb: u64, _: &str) -> Result<Option<u64>, String> {
        Ok(Some(kb))
    }
    fn other(value: &Value, field: &str) -> Result<Option<u64>, String> {
        match value {
            Value::Null => Ok(None),
            Value::Number(n) => {
                if let Some(kb) = n.as_u64() {
                    Self::typed(kb, field)
                } else if n.as_i64().is_some() {
                    Ok(None)
                } else {
                    match n.as_f64() {
                        Some(kb) if kb >= 1.0 => Ok(Some(kb.min(u64::MAX as f64) as u64)),
                        _ => Ok(None),
                    }
                }
            }
            other => Err(format!(
                "{field} must be a number of KiB, not {}",
                json_type(other)
            )),
        }
    }
}

/// A list of `{"localFile", "destFile"}` objects; a file may hold other keys (ignored).
pub struct Files;

impl Kind for Files {
    type Typed = Vec<FileRequest>;
    type Out = Vec<FileRequest>;
    fn typed(files: Vec<FileRequest>, _: &str) -> Result<Vec<FileRequest>, String> {
        Ok(files)
    }
    fn other(value: &Value, field: &str) -> Result<Vec<FileRequest>, String> {
        let Value::Array(entries) = value else {
            return Err(format!(
                "{field} must be a list of {{\"localFile\", \"destFile\"}} objects, not {}",
                json_type(value)
            ));
        };
        let mut files = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let Value::Object(file) = entry else {
                return Err(format!(
                    "{field}[{i}] must be a {{\"localFile\", \"destFile\"}} object, not {}",
                    json_type(entry)
                ));
            };
            let name = |key: &str| match file.get(key) {
                None => Err(key_error(key)),
                Some(Value::String(name)) => Ok(name.clone()),
                Some(other) => Text::other(other, &format!("{field}[{i}].{key}")),
            };
            let local_file = name("localFile")?;
            let dest_file = name("destFile")?;
            files.push(FileRequest {
                local_file,
                dest_file,
            });
        }
        Ok(files)
    }
}

/// A file as the typed reading takes it: an object of exactly `localFile` and `destFile`,
/// each once. Read by hand: serde's derived reading of a struct also takes a list of its
/// fields' values (`["a.c", "Makefile"]`), which the tree reading refuses.
impl<'de> Deserialize<'de> for FileRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FileVisitor)
    }
}

struct FileVisitor;

impl<'de> Visitor<'de> for FileVisitor {
    type Value = FileRequest;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a {\"localFile\", \"destFile\"} object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FileRequest, A::Error> {
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
            (Some(local_file), Some(dest_file)) => Ok(FileRequest {
                local_file,
                dest_file,
            }),
            _ => Err(de::Error::custom("a file's name missing")),
        }
    }
}

/// The keys of a file. Any other is refused before its value is read: serde_json skips a
/// value without the depth limit it reads a tree with, so a deep key of a file's own would
/// pass the typed reading and not the tree reading.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum FileKey {
    LocalFile,
    DestFile,
}

/// A JSON value's type, as a message names it.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
