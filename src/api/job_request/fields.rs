//! How a field declared in [`super`]'s table is read, the same way by both readings of an
//! addJob body.
//!
//! Each reading first finds what the body holds for a field, a [`Slot`]: nothing, null, a
//! value of the type Autolab sends, or a value of another type. From there one path serves
//! both: [`read`] hands the slot to the field's [`Kind`], or, for nothing, to the
//! declaration's presence rule (`required`, `default(..)`, `required_if(..)`). The readings
//! differ only in where a slot comes from (serde reading the bytes into a struct, or a
//! look-up in the JSON tree), so a field cannot be read one way by one of them and another
//! way by the other.
//!
//! The typed reading takes only nothing or a value of the usual type: serde fails on null or
//! any other type, and the tree reading reads that body. Autolab sends no null, and serde's
//! `Option` of the usual type is the cheapest thing to read a field into: a slot of four
//! kinds there cost the typed reading 3% more instructions (callgrind).

use serde::de::{Deserialize, DeserializeOwned, Deserializer};
use serde_json::{Map, Value};

use super::kinds::Kind;

/// What a body holds for one field.
pub enum Slot<'v, T> {
    Missing,
    Null,
    /// A value of the type Autolab sends.
    Typed(T),
    /// A value of any other type (the tree reading's only).
    Other(&'v Value),
}

/// The typed reading's field: `None` when the body does not name it, a value of the usual
/// type otherwise; null is refused (serde's `Option` would take it for missing, where a
/// field's kind may read it otherwise).
pub fn typed<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// The typed reading's slot for a field.
pub fn typed_slot<T>(value: Option<T>) -> Slot<'static, T> {
    match value {
        None => Slot::Missing,
        Some(value) => Slot::Typed(value),
    }
}

/// The tree reading's slot for a field, from the first of its names the body holds (`name`,
/// then its `aliases`), and that name (for the messages). A value is taken as the typed
/// reading would take it when serde can read it as that type, so both readings hand the
/// kind the same thing.
pub fn tree_slot<'v, T: DeserializeOwned>(
    job: &'v Map<String, Value>,
    name: &'static str,
    aliases: &[&'static str],
) -> (Slot<'v, T>, &'static str) {
    let found = std::iter::once(&name)
        .chain(aliases)
        .find_map(|&name| job.get(name).map(|value| (name, value)));
    let Some((name, value)) = found else {
        return (Slot::Missing, name);
    };
    let slot = match value {
        Value::Null => Slot::Null,
        value => match T::deserialize(value) {
            Ok(typed) => Slot::Typed(typed),
            Err(_) => Slot::Other(value),
        },
    };
    (slot, name)
}

/// A field's value: what its kind reads from the slot, or what `missing` says when the body
/// does not hold it (the presence rule's part). The error is the client's `statusMsg`.
// Always inlined: the usual addJob calls it once per field, and left a call (as the
// compiler chooses) it costs the typed reading 2.6% more instructions (callgrind).
#[inline(always)]
pub fn read<K: Kind>(
    slot: Slot<'_, K::Typed>,
    name: &str,
    missing: impl FnOnce() -> Result<K::Out, String>,
) -> Result<K::Out, String> {
    match slot {
        Slot::Missing => missing(),
        Slot::Null => K::other(&Value::Null, name),
        Slot::Typed(value) => K::typed(value, name),
        Slot::Other(value) => K::other(value, name),
    }
}

/// A field Python indexed without a default: missing, it answered the `KeyError` text.
pub fn key_error(name: &str) -> String {
    format!("'{name}'")
}

/// Declares a job's request: the public struct, the struct serde reads the usual shape into,
/// and both readings' field-by-field code, from one list of fields in Python's order (the order
/// the fields are read in, so the order in which a body's faults are found).
///
/// Each field is `rust_name: Type = "jsonName" | "otherName" as Kind, presence;`:
/// - the JSON names: the first the body holds counts (the others are older clients'
///   spellings); the typed reading leaves a body that holds two of them to the tree reading;
/// - the [`Kind`] (in `kinds.rs`): which JSON type the field takes, how it is clamped,
///   and what any other type means, a refusal included;
/// - the presence: `required` (missing: Python's `KeyError` text), `default(EXPR)` (missing:
///   EXPR), or `required_if(COND)` (read, and required, only when COND holds of the fields
///   read before it; `None` otherwise).
macro_rules! job_request_fields {
    (
        $(#[$struct_meta:meta])*
        pub struct $request:ident {
            $(
                $(#[$field_meta:meta])*
                $field:ident: $type:ty = $name:literal $(| $alias:literal)* as $kind:ty,
                    $presence:ident $(($($condition:tt)*))?;
            )*
        }
    ) => {
        $(#[$struct_meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $request {
            $( $(#[$field_meta])* pub $field: $type, )*
        }

        /// The body in the shape Autolab sends, read by serde without a JSON tree: each field
        /// absent or a value of its usual type. Any other shape (a field null or of another
        /// type, a key given twice, a field of no client's) fails to read here and goes to
        /// the tree reading. No value is skipped unread: serde_json skips without the depth
        /// limit it reads a tree with, so a deep unknown field would pass here and not there.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Typical {
            $(
                #[serde(
                    default,
                    deserialize_with = "crate::api::job_request::fields::typed",
                    rename = $name $(, alias = $alias)*
                )]
                $field: Option<<$kind as $crate::api::job_request::kinds::Kind>::Typed>,
            )*
        }

        impl $request {
            /// Every JSON name a field is read from, in the declaration's order: the fuzz
            /// tests check that they change each of them.
            pub const JSON_NAMES: &'static [&'static str] = &[$($name, $($alias,)*)*];

            /// The fields of a body serde read as [`Typical`]; `None` where the tree reading
            /// would refuse the body (and word the refusal).
            fn read_typical(typical: Typical) -> Option<$request> {
                $(
                    let $field = job_request_fields!(
                        @field typical, $kind,
                        ($crate::api::job_request::fields::typed_slot(typical.$field), $name),
                        $presence $(($($condition)*))?
                    );
                )*
                Some($request { $($field),* })
            }

            /// The fields of a body read as a JSON object.
            fn read_tree(
                job: &serde_json::Map<String, serde_json::Value>,
            ) -> Result<$request, String> {
                $(
                    let $field = job_request_fields!(
                        @field tree, $kind,
                        $crate::api::job_request::fields::tree_slot(job, $name, &[$($alias),*]),
                        $presence $(($($condition)*))?
                    );
                )*
                Ok($request { $($field),* })
            }
        }
    };

    // A field's reading, by its presence rule; `typical` gives up on an error (`None`),
    // `tree` returns it.
    (@field $reading:ident, $kind:ty, $slot:expr, required) => {{
        let (slot, name) = $slot;
        job_request_fields!(@try $reading, $crate::api::job_request::fields::read::<$kind>(
            slot,
            name,
            || Err($crate::api::job_request::fields::key_error(name)),
        ))
    }};
    (@field $reading:ident, $kind:ty, $slot:expr, default($default:expr)) => {{
        let (slot, name) = $slot;
        job_request_fields!(@try $reading, $crate::api::job_request::fields::read::<$kind>(
            slot,
            name,
            || Ok($default),
        ))
    }};
    (@field $reading:ident, $kind:ty, $slot:expr, required_if($condition:expr)) => {
        if $condition {
            Some(job_request_fields!(@field $reading, $kind, $slot, required))
        } else {
            None
        }
    };
    (@try typical, $result:expr) => {
        $result.ok()?
    };
    (@try tree, $result:expr) => {
        $result?
    };
}

pub(super) use job_request_fields;
