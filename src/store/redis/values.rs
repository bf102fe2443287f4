//! The store's values as Redis holds and returns them: jobs, machines and pool targets as
//! JSON, ids as decimal text, and a new job's JSON cut where Redis writes its id. Anything
//! that does not read back is [`StoreError::Corrupt`], naming the key it came from.

use std::sync::LazyLock;

use memchr::memmem;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::keys::Keys;
use crate::model::{Job, Machine, PoolView};
use crate::store::{Added, StoreError};

/// `value` as JSON.
pub(super) fn encode<T: Serialize>(keys: &Keys, value: &T) -> Result<String, StoreError> {
    // Our model types always serialize; this guards against a future field that does not.
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        key: keys.all(),
        message: format!("cannot encode a value as JSON: {e}"),
    })
}

/// The value stored as `json` under `key`.
pub(super) fn decode<T: DeserializeOwned>(key: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// An id stored under `key`.
pub(super) fn parse_id(key: &str, id: &str) -> Result<u64, StoreError> {
    id.parse().map_err(|_| StoreError::Corrupt {
        key: key.to_string(),
        message: format!("{id:?} is not an id"),
    })
}

/// Ids stored under `key`, in the order given.
pub(super) fn parse_ids(key: &str, ids: &[String]) -> Result<Vec<u64>, StoreError> {
    ids.iter().map(|id| parse_id(key, id)).collect()
}

/// A stored live job with its lease laid over it (see `keys`: the copies inside its JSON do
/// not count).
pub(super) fn live_job(
    keys: &Keys,
    json: &str,
    owner: Option<String>,
    assigned: bool,
) -> Result<Job, StoreError> {
    let mut job: Job = decode(&keys.live, json)?;
    job.owner = owner;
    job.assigned = assigned;
    Ok(job)
}

/// `job` as it is stored once it leaves the live jobs or the lease.
pub(super) fn released(job: &Job) -> Job {
    let mut job = job.clone();
    job.owner = None;
    job.assigned = false;
    job
}

/// Pools as the `pools` and `owner_pools` scripts return them: name, total ids, free ids.
pub(super) fn pool_views(
    keys: &Keys,
    rows: Vec<(String, Vec<String>, Vec<String>)>,
) -> Result<Vec<(String, PoolView)>, StoreError> {
    rows.into_iter()
        .map(|(pool, total, free)| {
            let key = keys.any_owners_pool(&pool);
            Ok((
                pool.clone(),
                PoolView {
                    total: parse_ids(&key, &total)?,
                    free: parse_ids(&key, &free)?,
                },
            ))
        })
        .collect()
}

/// Machines handed back by a script as owner, pool, id, JSON (or nil) quadruples.
pub(super) fn reaped_machines(
    keys: &Keys,
    flat: Vec<Option<String>>,
) -> Result<Vec<Machine>, StoreError> {
    let mut machines = Vec::with_capacity(flat.len() / 4);
    for entry in flat.chunks(4) {
        let [Some(owner), Some(pool), Some(id), json] = entry else {
            return Err(StoreError::Corrupt {
                key: keys.any_pool(),
                message: "a pool machine came back without owner, pool or id".into(),
            });
        };
        let key = keys.pool_machines(owner, pool);
        let id = parse_id(&key, id)?;
        let mut machine = match json {
            Some(json) => decode(&key, json)?,
            None => Machine {
                name: pool.clone(),
                ..Machine::default()
            },
        };
        machine.id = Some(id);
        machine.owner.get_or_insert_with(|| owner.clone());
        machines.push(machine);
    }
    Ok(machines)
}

/// The answer of the scripts adding a new job (1 and its id, 0 and the queue's length, or 2
/// and the id of the live job writing the same output file): the new job's id, or the live
/// job's as [`Added::Existing`], or [`StoreError::QueueFull`].
pub(super) fn added((code, value): (u64, u64)) -> Result<Result<u64, Added>, StoreError> {
    match code {
        1 => Ok(Ok(value)),
        2 => Ok(Err(Added::Existing(value))),
        _ => Err(StoreError::QueueFull(value)),
    }
}

/// Stands for a new job's id in its trace while Redis has yet to choose the id. A NUL can
/// reach JSON only escaped (`\u0000`), so the marker's JSON form is as unlikely in a job's
/// own text as any string can be; [`new_job_parts`] checks that it is absent all the same.
pub(super) const NEW_ID_MARK: &str = "\u{0}tango-new-job-id\u{0}";

/// The JSON of a new job encoded with id 0 and [`NEW_ID_MARK`] in its last trace line, cut
/// where the id goes, so that joining the parts with the id gives the job's JSON with that
/// id: `{"id":` / everything up to the marker / the rest. `None` when the JSON does not
/// start with the id, or the marker's JSON form appears other than once.
pub(super) fn new_job_parts(json: &str) -> Option<[&str; 3]> {
    // The marker's JSON form, and a searcher for it, made once.
    static MARK_JSON: LazyLock<Option<memmem::Finder<'static>>> = LazyLock::new(|| {
        let quoted = serde_json::to_string(NEW_ID_MARK).ok()?;
        let mark = quoted.trim_matches('"');
        (!mark.is_empty()).then(|| memmem::Finder::new(mark.as_bytes()).into_owned())
    });
    const HEAD: &str = r#"{"id":"#;
    let rest = json.strip_prefix(HEAD)?.strip_prefix('0')?;
    let finder = MARK_JSON.as_ref()?;
    if !rest.starts_with(',') {
        return None;
    }
    let at = finder.find(rest.as_bytes())?;
    let (before, after) = (&rest[..at], &rest[at + finder.needle().len()..]);
    if finder.find(after.as_bytes()).is_some() {
        return None;
    }
    Some([HEAD, before, after])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::added_line;

    fn new_job(name: &str) -> Job {
        let mut job = Job {
            name: name.to_string(),
            timeout: 10,
            ..Job::default()
        };
        job.timings.added = Some(1_700_000_000.123_456);
        job.trace(added_line(name, NEW_ID_MARK));
        job
    }

    #[test]
    fn joining_the_parts_with_the_id_gives_the_job_with_that_id() {
        let job = new_job("lab_hello_1_user@x.edu");
        let json = serde_json::to_string(&job).expect("encode");
        let parts = new_job_parts(&json).expect("the marker is found once");
        let joined: Job = serde_json::from_str(&parts.join("4242")).expect("decode");
        let mut expected = job.clone();
        expected.id = 4242;
        let last = expected.trace.last_mut().expect("trace line");
        *last = last.replace(NEW_ID_MARK, "4242");
        assert!(last.ends_with("|Added job lab_hello_1_user@x.edu:4242 to queue"));
        assert_eq!(joined, expected);
    }

    #[test]
    fn a_job_whose_text_holds_the_marker_is_not_cut() {
        let job = new_job(&format!("evil{NEW_ID_MARK}"));
        let json = serde_json::to_string(&job).expect("encode");
        assert!(new_job_parts(&json).is_none());
        let mut elsewhere = new_job("fine");
        elsewhere.notify_url = Some(NEW_ID_MARK.to_string());
        let json = serde_json::to_string(&elsewhere).expect("encode");
        assert!(new_job_parts(&json).is_none());
        // Without the marker there is nothing to cut either.
        let plain = Job::default();
        assert!(new_job_parts(&serde_json::to_string(&plain).expect("encode")).is_none());
    }
}
