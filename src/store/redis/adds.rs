//! New jobs on their way to Redis together: the `addJob` calls that arrive while one script
//! call is on its way go in the next one, in the order they came.
//!
//! Each call to Redis costs both sides a write, a read and the script's start, whatever it
//! carries; under a burst of submissions (a deadline) that is most of an `addJob`'s store
//! time. One task sends, so a client that goes away cannot take other clients' jobs with
//! it: a job handed over is sent, and its caller learns the outcome if still there.

use std::sync::{Arc, Mutex};

use redis::Value;
use tokio::sync::oneshot;

use super::keys::Keys;
use super::link::{Link, Retry};
use super::scripts::SCRIPTS;
use crate::model::Counter;
use crate::store::StoreError;

/// At most this many jobs in one script call: the call holds Redis meanwhile (about 15 µs
/// a job).
const MAX_BATCH: usize = 64;

/// What became of the job (1 added, 0 the queue was full, 2 a duplicate), and its id, the
/// queue's length or the live job's id.
type Outcome = Result<(u64, u64), StoreError>;

/// How a job is added: the queue's cap, and whether the duplicate guard is on. Jobs with
/// other terms (a changed configuration, or the other method) go in another call.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Terms {
    pub(super) max_queued: u64,
    pub(super) once: bool,
}

/// A job's JSON in its two parts (see `values::new_job_parts`), and its output file.
#[derive(Clone, Copy)]
pub(super) struct NewJob<'a> {
    pub(super) before: &'a str,
    pub(super) after: &'a str,
    pub(super) output: &'a str,
}

/// The jobs waiting to be sent, and the connection they go by.
pub(super) struct Adds {
    link: Arc<Link>,
    keys: Keys,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    jobs: Vec<Pending>,
    /// A sender task is running; it sends until `jobs` is empty.
    sending: bool,
}

/// A job's JSON in its two parts (see `values::new_job_parts`), its output file, and where
/// its outcome goes.
struct Pending {
    before: String,
    after: String,
    output: String,
    terms: Terms,
    outcome: oneshot::Sender<Outcome>,
}

impl Adds {
    pub(super) fn new(link: Arc<Link>, keys: Keys) -> Adds {
        Adds {
            link,
            keys,
            waiting: Mutex::default(),
        }
    }

    /// Adds one job, given the parts of its JSON around its id, with the jobs of the other
    /// calls meanwhile. A call that is dropped does not withdraw its job.
    pub(super) async fn add(self: &Arc<Self>, job: NewJob<'_>, terms: Terms) -> Outcome {
        let alone = {
            let mut waiting = self.lock();
            !std::mem::replace(&mut waiting.sending, true)
        };
        if alone {
            // Nothing on its way: this call sends its job itself, without a hand-over to a
            // task (a wake-up each way, which one connection at a time would feel). Calls
            // arriving meanwhile wait, and are sent after it.
            let mut handover = Handover {
                adds: self,
                failed: None,
            };
            let outcome = self.send(terms, &[job]).await.map(|outcomes| outcomes[0]);
            // Only an outage is shared by the jobs behind this one; any other failure was
            // this call's own.
            handover.failed = match &outcome {
                Err(error @ StoreError::Unavailable(_)) => Some(error.clone()),
                _ => None,
            };
            return outcome;
        }
        let (outcome, answer) = oneshot::channel();
        let start = {
            let mut waiting = self.lock();
            waiting.jobs.push(Pending {
                before: job.before.to_string(),
                after: job.after.to_string(),
                output: job.output.to_string(),
                terms,
                outcome,
            });
            // The sender may have finished since.
            !std::mem::replace(&mut waiting.sending, true)
        };
        if start {
            tokio::spawn(self.clone().send_all());
        }
        answer.await.unwrap_or_else(|_| {
            Err(self
                .link
                .unavailable("the call adding this job ended without an answer"))
        })
    }

    /// When whatever was sending stops (a call that sent its own job, or a sender task that
    /// ended early): the jobs that came meanwhile go on in a sender task, or, given
    /// `failed` (Redis unavailable, or no sender can run), hear it now: they were not sent.
    fn hand_over(self: &Arc<Self>, failed: Option<StoreError>) {
        let unsent = {
            let mut waiting = self.lock();
            if waiting.jobs.is_empty() {
                waiting.sending = false;
                return;
            }
            match (&failed, tokio::runtime::Handle::try_current()) {
                (None, Ok(runtime)) => {
                    runtime.spawn(self.clone().send_all());
                    return;
                }
                _ => {
                    waiting.sending = false;
                    std::mem::take(&mut waiting.jobs)
                }
            }
        };
        let error = failed.unwrap_or_else(|| {
            self.link
                .unavailable("the job was not sent (shutting down)")
        });
        fail(unsent, &error);
    }

    /// Sends the waiting jobs, a batch at a time, until none is left.
    async fn send_all(self: Arc<Self>) {
        let mut sender = Sender {
            adds: &self,
            finished: false,
        };
        loop {
            let (terms, batch): (Terms, Vec<Pending>) = {
                let mut waiting = self.lock();
                if waiting.jobs.is_empty() {
                    waiting.sending = false;
                    sender.finished = true;
                    return;
                }
                // One set of terms per call: jobs with others go next.
                let terms = waiting.jobs[0].terms;
                let n = waiting
                    .jobs
                    .iter()
                    .take(MAX_BATCH)
                    .take_while(|p| p.terms == terms)
                    .count();
                (terms, waiting.jobs.drain(..n).collect())
            };
            let sent = {
                let jobs: Vec<NewJob<'_>> = batch
                    .iter()
                    .map(|p| NewJob {
                        before: &p.before,
                        after: &p.after,
                        output: &p.output,
                    })
                    .collect();
                self.send(terms, &jobs).await
            };
            match sent {
                Ok(outcomes) => {
                    for (job, outcome) in batch.into_iter().zip(outcomes) {
                        let _ = job.outcome.send(Ok(outcome));
                    }
                }
                Err(error) => {
                    // When Redis is unavailable, those still waiting would meet the same
                    // after another full wait: they are answered now (they were not sent, so
                    // not added), and every caller hears within one call's budget.
                    let unsent = match error {
                        StoreError::Unavailable(_) => std::mem::take(&mut self.lock().jobs),
                        _ => Vec::new(),
                    };
                    fail(batch.into_iter().chain(unsent), &error);
                }
            }
        }
    }

    /// One script call for `jobs`: an outcome for each job, in order.
    async fn send(&self, terms: Terms, jobs: &[NewJob<'_>]) -> Result<Vec<(u64, u64)>, StoreError> {
        let keys = &self.keys;
        let mut invocation = SCRIPTS.add_jobs.prepare_invoke();
        invocation
            .key(&keys.counters)
            .key(&keys.queue)
            .key(&keys.next_job_id)
            .key(&keys.live)
            .key(&keys.outputs)
            .key(&keys.output_of);
        invocation
            .arg(&keys.ns)
            .arg(Counter::JobRequests.name())
            .arg(terms.max_queued)
            .arg(if terms.once { "1" } else { "0" });
        for job in jobs {
            invocation.arg(job.before).arg(job.after).arg(job.output);
        }
        let invocation = &invocation;
        let flat: Vec<u64> = self
            .link
            .call(Retry::IfUnsent, |mut conn| async move {
                invocation.invoke_async::<Value>(&mut conn).await
            })
            .await?;
        if flat.len() != 2 * jobs.len() {
            return Err(StoreError::Corrupt {
                key: keys.all(),
                message: format!(
                    "redis answered {} values for {} jobs added",
                    flat.len(),
                    jobs.len()
                ),
            });
        }
        Ok(flat.chunks(2).map(|p| (p[0], p[1])).collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // Only ever changed whole (a push, a drain, a flag): a panic cannot leave it torn.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ends a call that sent its own job, completed or dropped (its client went away): the
/// jobs that came meanwhile are not left waiting.
struct Handover<'a> {
    adds: &'a Arc<Adds>,
    failed: Option<StoreError>,
}

impl Drop for Handover<'_> {
    fn drop(&mut self) {
        self.adds.hand_over(self.failed.take());
    }
}

/// Ends a sender task: if it stopped early (a panic, the runtime shutting down), the jobs
/// still waiting are answered and the next call starts a new sender, so that no caller
/// waits forever.
struct Sender<'a> {
    adds: &'a Arc<Adds>,
    finished: bool,
}

impl Drop for Sender<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.adds.hand_over(Some(
                self.adds
                    .link
                    .unavailable("the job was not sent (the sender stopped)"),
            ));
        }
    }
}

/// Answers each of `jobs` with `error`.
fn fail(jobs: impl IntoIterator<Item = Pending>, error: &StoreError) {
    for job in jobs {
        let _ = job.outcome.send(Err(error.clone()));
    }
}
