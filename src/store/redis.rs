//! The Redis store: durable, and shared by every `tango serve` and `tango manager` process
//! that points at the same Redis and namespace, on any host.
//!
//! Each [`JobStore`] method is one Lua script, one command, or one `MULTI` block (a waiting
//! `claim_next` repeats one claim script between waits; `add_job`s made together share one
//! script call), so other clients never see half of a change. Values are JSON (`serde_json`
//! of [`Job`], [`Machine`], [`PoolTarget`]), never a language pickle. Every call but a
//! waiting `claim_next` answers within [`CALL_BUDGET`], with [`StoreError::Unavailable`]
//! while Redis cannot be reached, and the store recovers by itself when Redis comes back. Requires Redis 6.2 or newer, one server (or a primary with
//! replicas), not Redis Cluster.
//!
//! This file is [`RedisStore`]: which script or command each method sends, and how it reads
//! the answer. The rest, one concern each:
//! - `keys`: the key layout under the namespace, and the names of the keys;
//! - `scripts`, and the Lua files under `redis/scripts/`: the scripts, each with its KEYS
//!   and ARGV;
//! - `link`: the connection: connecting, how long a call may take and when it is sent
//!   again, and what a Redis error means;
//! - `waiter`: how a `claim_next` waits for the queue to fill;
//! - `adds`: new jobs on their way to Redis together;
//! - `values`: JSON and ids, as stored and as read back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use redis::{FromRedisValue, Script, ScriptInvocation};
use tokio::time::Instant;

mod adds;
mod keys;
mod link;
mod scripts;
mod values;
mod waiter;

pub use link::{CALL_BUDGET, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

use super::flight::SharedRead;
use super::{Added, CancelRequest, JobStore, Reaped, Schedule, StoreError, StoreStats, added_line};
use crate::config::StoreConfig;
use crate::model::{
    Counter, Counters, FailedCallback, Job, JobId, Machine, PoolTarget, PoolView, Timings, ctime,
    unix_now,
};
use adds::{Adds, NewJob, Terms};
use keys::Keys;
use link::{Link, Retry};
use scripts::SCRIPTS;
use values::{
    NEW_ID_MARK, added, decode, encode, live_job, new_job_parts, parse_ids, pool_views,
    reaped_machines, released,
};
use waiter::{FOREVER, MIN_BLOCK, Waiter};

/// How often a claim looks again while every queued job is of a courselab at its cap
/// (`jobs.max_running_per_courselab`).
const CAPPED_POLL: Duration = Duration::from_millis(200);

/// The store on one Redis, under one namespace.
pub struct RedisStore {
    /// The connection every call but a waiting claim goes by.
    link: Arc<Link>,
    keys: Keys,
    /// Where waiting claimers block until the queue has a job.
    waiter: Waiter,
    /// `overview` reads on their way, shared by the calls arriving meanwhile.
    overview_read: SharedRead<Result<(Counters, StoreStats), StoreError>>,
    /// New jobs on their way to Redis together (`add_job`).
    adds: Arc<Adds>,
    /// Which queued job a claim takes.
    schedule: Schedule,
}

impl RedisStore {
    /// Opens the store and checks that Redis answers, so that a wrong address or password is
    /// reported at start.
    pub async fn connect(config: &StoreConfig) -> Result<RedisStore, StoreError> {
        let store = Self::connect_lazy(config)?;
        store.ping().await?;
        Ok(store)
    }

    /// Opens the store without reaching Redis: the first call connects, and each call
    /// reports [`StoreError::Unavailable`] while Redis cannot be reached.
    pub fn connect_lazy(config: &StoreConfig) -> Result<RedisStore, StoreError> {
        let keys = Keys::new(&config.namespace);
        let link = Arc::new(Link::open(config, &keys)?);
        Ok(RedisStore {
            adds: Arc::new(Adds::new(link.clone(), keys.clone())),
            waiter: Waiter::new(link.clone(), keys.queue.clone()),
            link,
            keys,
            overview_read: SharedRead::default(),
            schedule: Schedule::default(),
        })
    }

    /// The store, its claims made in `schedule`'s order.
    #[must_use]
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    // ---- calling Redis ----

    /// A script invocation with the namespace as `ARGV[1]`.
    fn invocation<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&self.keys.ns);
        invocation
    }

    /// Runs a script on the shared connection.
    async fn run<T: FromRedisValue>(
        &self,
        retry: Retry,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.link
            .call(retry, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await
    }

    /// Runs one command on the shared connection.
    async fn query<T: FromRedisValue>(
        &self,
        retry: Retry,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.link
            .call(
                retry,
                |mut conn| async move { cmd.query_async(&mut conn).await },
            )
            .await
    }

    /// Runs a read-only `MULTI` block: a consistent snapshot of several keys.
    async fn snapshot<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        self.link
            .call(Retry::Idempotent, |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await
    }

    // ---- pieces of the methods ----

    /// Takes the head of the queue for `owner` now, if there is one.
    async fn try_claim(&self, owner: &str) -> Result<Option<Job>, StoreError> {
        let mut invocation = self.invocation(&SCRIPTS.claim);
        invocation
            .arg(owner)
            .arg(if self.schedule.fifo { "1" } else { "0" })
            .arg(self.schedule.max_running_per_lab);
        for (courselab, weight) in &self.schedule.weights {
            invocation.arg(courselab).arg(weight);
        }
        let claimed: Option<(String, bool)> = self.run(Retry::IfUnsent, &invocation).await?;
        claimed
            .map(|(json, assigned)| live_job(&self.keys, &json, Some(owner.to_string()), assigned))
            .transpose()
    }

    /// `add_job` for a job whose own text holds [`NEW_ID_MARK`]: the id is taken first (a
    /// second round trip, and an id used even if the queue turns out full) and the whole
    /// JSON is sent. `timings` and `stamp` are those the job is added with.
    async fn add_whole_job(
        &self,
        job: &mut Job,
        timings: Timings,
        stamp: &str,
        terms: Terms,
    ) -> Result<Added, StoreError> {
        let id = self.allocate_job_id().await?;
        let mut whole = released(job);
        whole.id = id;
        whole.timings = timings;
        whole.trace_stamped(stamp, added_line(&whole.name, id));
        let mut invocation = SCRIPTS.add_job.prepare_invoke();
        let keys = &self.keys;
        invocation
            .key(&keys.counters)
            .key(&keys.queue)
            .key(&keys.live)
            .key(&keys.lease)
            .key(&keys.assigned)
            .key(&keys.outputs)
            .key(&keys.output_of);
        invocation
            .arg(&keys.ns)
            .arg(Counter::JobRequests.name())
            .arg(terms.max_queued)
            .arg(id)
            .arg(encode(keys, &whole)?)
            .arg(&whole.output_file)
            .arg(if terms.once { "1" } else { "0" });
        if let Err(existing) = added(self.run(Retry::IfUnsent, &invocation).await?)? {
            return Ok(existing);
        }
        *job = whole;
        Ok(Added::New)
    }

    /// `add_job`, and with the guard on `add_job_once`.
    async fn add(&self, job: &mut Job, terms: Terms) -> Result<Added, StoreError> {
        let mut stored = released(job);
        stored.id = 0;
        stored.timings.added = Some(unix_now());
        let stamp = ctime(Utc::now());
        stored.trace_stamped(&stamp, added_line(&stored.name, NEW_ID_MARK));
        let json = encode(&self.keys, &stored)?;
        // The usual case: Redis takes the id and writes it into the JSON, in one call with
        // the other jobs being added meanwhile. A job whose own text holds the marker
        // cannot be cut there, and goes whole.
        let Some([_, before, after]) = new_job_parts(&json) else {
            return self.add_whole_job(job, stored.timings, &stamp, terms).await;
        };
        let new = NewJob {
            before,
            after,
            output: &stored.output_file,
        };
        let id = match added(self.adds.add(new, terms).await?)? {
            Ok(id) => id,
            Err(existing) => return Ok(existing),
        };
        stored.id = id;
        // The line as Redis wrote it, made again rather than searched for the marker.
        stored.trace.pop();
        stored.trace_stamped(&stamp, added_line(&stored.name, id));
        *job = stored;
        Ok(Added::New)
    }

    /// `HMGET` of every counter, in [`Counter::ALL`]'s order.
    fn counters_cmd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&self.keys.counters);
        for counter in Counter::ALL {
            cmd.arg(counter.name());
        }
        cmd
    }

    /// The counters from [`RedisStore::counters_cmd`]'s answer.
    fn counters_from(values: Vec<Option<u64>>) -> Counters {
        let mut counters = Counters::default();
        for (counter, value) in Counter::ALL.into_iter().zip(values) {
            *counters.slot(counter) = value.unwrap_or(0);
        }
        counters
    }

    /// The counters and job counts: one MULTI block, one round trip.
    async fn read_overview(&self) -> Result<(Counters, StoreStats), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(self.counters_cmd())
            .hlen(&self.keys.live)
            .hlen(&self.keys.dead)
            .llen(&self.keys.queue)
            .hlen(&self.keys.failed_callbacks);
        let (values, live, dead, queued, failed_callbacks): (Vec<Option<u64>>, u64, u64, u64, u64) =
            self.snapshot(&pipe).await?;
        Ok((
            Self::counters_from(values),
            StoreStats {
                live,
                dead,
                queued,
                failed_callbacks,
            },
        ))
    }
}

/// The manager a write to `job` names: without one, the job cannot be held.
fn holder(job: &Job) -> Result<&str, StoreError> {
    match job.owner.as_deref() {
        Some(owner) => Ok(owner),
        None => Err(StoreError::LeaseLost(job.id)),
    }
}

/// The answer of a script that checks the lease first: false when it was lost.
fn kept(held: bool, id: JobId) -> Result<(), StoreError> {
    if held {
        Ok(())
    } else {
        Err(StoreError::LeaseLost(id))
    }
}

#[async_trait]
impl JobStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.query(Retry::Idempotent, &redis::cmd("PING")).await?;
        Ok(())
    }

    async fn allocate_job_id(&self) -> Result<JobId, StoreError> {
        self.query(
            Retry::IfUnsent,
            redis::cmd("INCR").arg(&self.keys.next_job_id),
        )
        .await
    }

    async fn allocate_vm_id(&self) -> Result<u64, StoreError> {
        let handed_out: u64 = self
            .query(Retry::IfUnsent, redis::cmd("INCR").arg(&self.keys.vm_ids))
            .await?;
        Ok(999 + handed_out)
    }

    async fn enqueue(&self, job: &Job, max_queued: u64) -> Result<(), StoreError> {
        let json = encode(&self.keys, &released(job))?;
        let mut invocation = self.invocation(&SCRIPTS.enqueue);
        invocation
            .arg(job.id)
            .arg(json)
            .arg(max_queued)
            .arg(&job.output_file);
        let full: i64 = self.run(Retry::IfUnsent, &invocation).await?;
        if full >= 0 {
            return Err(StoreError::QueueFull(full as u64));
        }
        Ok(())
    }

    async fn add_job(&self, job: &mut Job, max_queued: u64) -> Result<(), StoreError> {
        let terms = Terms {
            max_queued,
            once: false,
        };
        self.add(job, terms).await.map(|_| ())
    }

    async fn add_job_once(&self, job: &mut Job, max_queued: u64) -> Result<Added, StoreError> {
        let terms = Terms {
            max_queued,
            once: true,
        };
        self.add(job, terms).await
    }

    async fn claim_next(&self, owner: &str, wait: Duration) -> Result<Option<Job>, StoreError> {
        // A wait too long to add to the clock (`Duration::MAX`) waits as good as forever.
        let deadline = Instant::now()
            .checked_add(wait)
            .unwrap_or_else(|| Instant::now() + FOREVER);
        // The last wake-up came at once (the queue holds jobs) with a cap on.
        let mut at_once = false;
        loop {
            if let Some(job) = self.try_claim(owner).await? {
                return Ok(Some(job));
            }
            if at_once {
                // Jobs are queued, but every one is of a courselab at its cap. A job
                // ending frees a place without queueing anything: look again after a
                // pause rather than wait on the queue (which answers at once).
                let remaining = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(CAPPED_POLL.min(remaining)).await;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let waited = Instant::now();
            if remaining < MIN_BLOCK || !self.waiter.wait(remaining).await? {
                return Ok(None);
            }
            at_once = self.schedule.max_running_per_lab > 0
                && waited.elapsed() < Duration::from_millis(50);
            // Something was queued; another manager may take it first, so claim and
            // maybe wait again.
        }
    }

    async fn update_live(&self, job: &Job) -> Result<(), StoreError> {
        let owner = holder(job)?;
        let json = encode(&self.keys, job)?;
        let mut invocation = self.invocation(&SCRIPTS.update_live);
        invocation
            .arg(job.id)
            .arg(owner)
            .arg(json)
            .arg(if job.assigned { "1" } else { "0" });
        // Writing the same job twice leaves the same state: safe to resend.
        kept(self.run(Retry::Idempotent, &invocation).await?, job.id)
    }

    async fn requeue(&self, job: &Job) -> Result<(), StoreError> {
        let owner = holder(job)?;
        let json = encode(&self.keys, &released(job))?;
        let mut invocation = self.invocation(&SCRIPTS.requeue);
        invocation.arg(job.id).arg(owner).arg(json);
        kept(self.run(Retry::IfUnsent, &invocation).await?, job.id)
    }

    async fn finish(&self, job: &Job, max_dead: u64) -> Result<(), StoreError> {
        let owner = holder(job)?;
        let json = encode(&self.keys, &released(job))?;
        let mut invocation = self.invocation(&SCRIPTS.finish);
        invocation.arg(job.id).arg(owner).arg(json).arg(max_dead);
        kept(self.run(Retry::IfUnsent, &invocation).await?, job.id)
    }

    async fn add_dead(&self, job: &Job, max_dead: u64) -> Result<(), StoreError> {
        let json = encode(&self.keys, &released(job))?;
        let mut invocation = self.invocation(&SCRIPTS.add_dead);
        invocation.arg(job.id).arg(json).arg(max_dead);
        let _: i64 = self.run(Retry::IfUnsent, &invocation).await?;
        Ok(())
    }

    async fn update_dead(&self, job: &Job) -> Result<bool, StoreError> {
        let json = encode(&self.keys, job)?;
        let mut invocation = self.invocation(&SCRIPTS.update_dead);
        invocation.arg(job.id).arg(json);
        self.run(Retry::Idempotent, &invocation).await
    }

    async fn live_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hget(&self.keys.live, id)
            .hget(&self.keys.lease, id)
            .sismember(&self.keys.assigned, id);
        let (json, owner, assigned): (Option<String>, Option<String>, bool) =
            self.snapshot(&pipe).await?;
        json.map(|json| live_job(&self.keys, &json, owner, assigned))
            .transpose()
    }

    async fn dead_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let json: Option<String> = self
            .query(
                Retry::Idempotent,
                redis::cmd("HGET").arg(&self.keys.dead).arg(id),
            )
            .await?;
        json.map(|json| decode(&self.keys.dead, &json)).transpose()
    }

    async fn live_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hgetall(&self.keys.live)
            .hgetall(&self.keys.lease)
            .smembers(&self.keys.assigned);
        let (live, mut leases, assigned): (
            HashMap<String, String>,
            HashMap<String, String>,
            HashSet<String>,
        ) = self.snapshot(&pipe).await?;
        let mut jobs = Vec::with_capacity(live.len());
        for (id, json) in live {
            let owner = leases.remove(&id);
            jobs.push(live_job(&self.keys, &json, owner, assigned.contains(&id))?);
        }
        jobs.sort_unstable_by_key(|job| job.id);
        Ok(jobs)
    }

    async fn dead_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .lrange(&self.keys.dead_order, 0, -1)
            .hgetall(&self.keys.dead);
        let (order, mut dead): (Vec<String>, HashMap<String, String>) =
            self.snapshot(&pipe).await?;
        order
            .iter()
            .filter_map(|id| dead.remove(id))
            .map(|json| decode(&self.keys.dead, &json))
            .collect()
    }

    async fn queued_ids(&self) -> Result<Vec<JobId>, StoreError> {
        let ids: Vec<String> = self
            .query(
                Retry::Idempotent,
                redis::cmd("LRANGE").arg(&self.keys.queue).arg(0).arg(-1),
            )
            .await?;
        parse_ids(&self.keys.queue, &ids)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hlen(&self.keys.live)
            .hlen(&self.keys.dead)
            .llen(&self.keys.queue)
            .hlen(&self.keys.failed_callbacks);
        let (live, dead, queued, failed_callbacks): (u64, u64, u64, u64) =
            self.snapshot(&pipe).await?;
        Ok(StoreStats {
            live,
            dead,
            queued,
            failed_callbacks,
        })
    }

    async fn request_cancel(&self, id: JobId) -> Result<CancelRequest, StoreError> {
        let mut invocation = self.invocation(&SCRIPTS.request_cancel);
        invocation.arg(id);
        // Marking twice is as good as once.
        let found: String = self.run(Retry::Idempotent, &invocation).await?;
        Ok(match found.as_str() {
            "queued" => CancelRequest::Queued,
            "running" => CancelRequest::Running,
            "finished" => CancelRequest::Finished,
            _ => CancelRequest::Unknown,
        })
    }

    async fn take_cancels(&self, owner: &str) -> Result<Vec<Job>, StoreError> {
        let mut invocation = self.invocation(&SCRIPTS.take_cancels);
        invocation.arg(owner);
        let taken: Vec<(String, bool)> = self.run(Retry::IfUnsent, &invocation).await?;
        taken
            .into_iter()
            .map(|(json, assigned)| live_job(&self.keys, &json, Some(owner.to_string()), assigned))
            .collect()
    }

    async fn keep_failed_callback(
        &self,
        record: &FailedCallback,
        max_kept: u64,
    ) -> Result<Vec<JobId>, StoreError> {
        let mut record = record.clone();
        record.replaying = None;
        let json = encode(&self.keys, &record)?;
        let mut invocation = self.invocation(&SCRIPTS.keep_failed_callback);
        invocation.arg(record.job_id).arg(json).arg(max_kept);
        // Keeping the same record twice leaves one record, in the same place.
        let dropped: Vec<String> = self.run(Retry::Idempotent, &invocation).await?;
        parse_ids(&self.keys.failed_callbacks, &dropped)
    }

    async fn failed_callbacks(&self) -> Result<Vec<FailedCallback>, StoreError> {
        let invocation = self.invocation(&SCRIPTS.failed_callbacks);
        let rows: Vec<(String, Option<String>)> = self.run(Retry::Idempotent, &invocation).await?;
        rows.into_iter()
            .map(|(json, claimant)| {
                let mut record: FailedCallback = decode(&self.keys.failed_callbacks, &json)?;
                record.replaying = claimant;
                Ok(record)
            })
            .collect()
    }

    async fn claim_failed_callback(
        &self,
        id: JobId,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<FailedCallback>, StoreError> {
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.invocation(&SCRIPTS.claim_failed_callback);
        invocation.arg(id).arg(owner).arg(lease_ms);
        // Not resent: a claim that landed would refuse its own second copy, and the record
        // would wait out the lease for nothing.
        let json: Option<String> = self.run(Retry::IfUnsent, &invocation).await?;
        json.map(|json| {
            let mut record: FailedCallback = decode(&self.keys.failed_callbacks, &json)?;
            record.replaying = Some(owner.to_string());
            Ok(record)
        })
        .transpose()
    }

    async fn settle_failed_callback(
        &self,
        id: JobId,
        owner: &str,
        still_failing: Option<&FailedCallback>,
    ) -> Result<bool, StoreError> {
        let json = match still_failing {
            Some(record) => {
                let mut record = record.clone();
                record.replaying = None;
                encode(&self.keys, &record)?
            }
            None => String::new(),
        };
        let mut invocation = self.invocation(&SCRIPTS.settle_failed_callback);
        invocation.arg(id).arg(owner).arg(json);
        self.run(Retry::IfUnsent, &invocation).await
    }

    async fn heartbeat(&self, owner: &str, lease: Duration) -> Result<(), StoreError> {
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.invocation(&SCRIPTS.heartbeat);
        invocation.arg(owner).arg(lease_ms);
        // Renewing twice is as good as once.
        let _: i64 = self.run(Retry::Idempotent, &invocation).await?;
        Ok(())
    }

    async fn release_owner(&self, owner: &str) -> Result<Vec<JobId>, StoreError> {
        let mut invocation = self.invocation(&SCRIPTS.release_owner);
        invocation.arg(owner);
        let ids: Vec<String> = self.run(Retry::IfUnsent, &invocation).await?;
        parse_ids(&self.keys.queue, &ids)
    }

    async fn live_owners(&self) -> Result<Vec<String>, StoreError> {
        let invocation = self.invocation(&SCRIPTS.live_owners);
        let mut owners: Vec<String> = self.run(Retry::Idempotent, &invocation).await?;
        owners.sort();
        Ok(owners)
    }

    async fn reap_expired(&self) -> Result<Reaped, StoreError> {
        let invocation = self.invocation(&SCRIPTS.reap_expired);
        let (owners, ids, machines): (Vec<String>, Vec<String>, Vec<Option<String>>) =
            self.run(Retry::IfUnsent, &invocation).await?;
        Ok(Reaped {
            owners,
            requeued: parse_ids(&self.keys.queue, &ids)?,
            machines: reaped_machines(&self.keys, machines)?,
        })
    }

    async fn pool_add(&self, owner: &str, pool: &str, vm: &Machine) -> Result<(), StoreError> {
        let json = encode(&self.keys, vm)?;
        let id = vm.id.map(|id| id.to_string()).unwrap_or_default();
        let mut invocation = self.invocation(&SCRIPTS.pool_add);
        invocation.arg(owner).arg(pool).arg(id).arg(json);
        // Not resent: a removal in between would be undone.
        let _: i64 = self.run(Retry::IfUnsent, &invocation).await?;
        Ok(())
    }

    async fn pool_free(&self, owner: &str, pool: &str, vm: &Machine) -> Result<bool, StoreError> {
        let Some(id) = vm.id else {
            return Ok(false);
        };
        let json = encode(&self.keys, vm)?;
        let mut invocation = self.invocation(&SCRIPTS.pool_free);
        invocation.arg(owner).arg(pool).arg(id).arg(json);
        // Not resent: had the first one landed, the machine may have been taken since, and
        // freeing it again would hand it out twice.
        self.run(Retry::IfUnsent, &invocation).await
    }

    async fn pool_take(&self, owner: &str, pool: &str) -> Result<Option<Machine>, StoreError> {
        let mut invocation = self.invocation(&SCRIPTS.pool_take);
        invocation.arg(owner).arg(pool);
        let taken: Option<(String, Option<String>)> =
            self.run(Retry::IfUnsent, &invocation).await?;
        let Some((id, json)) = taken else {
            return Ok(None);
        };
        let key = self.keys.pool_machines(owner, pool);
        let Some(json) = json else {
            return Err(StoreError::Corrupt {
                key,
                message: format!("free machine {id} has no stored description"),
            });
        };
        decode(&key, &json).map(Some)
    }

    async fn pool_remove(&self, owner: &str, pool: &str, vm_id: u64) -> Result<bool, StoreError> {
        let mut invocation = self.invocation(&SCRIPTS.pool_remove);
        invocation.arg(owner).arg(pool).arg(vm_id);
        self.run(Retry::IfUnsent, &invocation).await
    }

    async fn pools(&self) -> Result<BTreeMap<String, PoolView>, StoreError> {
        let invocation = self.invocation(&SCRIPTS.pools);
        let rows: Vec<(String, Vec<String>, Vec<String>)> =
            self.run(Retry::Idempotent, &invocation).await?;
        let mut merged: BTreeMap<String, PoolView> = BTreeMap::new();
        for (pool, view) in pool_views(&self.keys, rows)? {
            let entry = merged.entry(pool).or_default();
            entry.total.extend(view.total);
            entry.free.extend(view.free);
        }
        Ok(merged)
    }

    async fn owner_pools(&self, owner: &str) -> Result<BTreeMap<String, PoolView>, StoreError> {
        let mut invocation = self.invocation(&SCRIPTS.owner_pools);
        invocation.arg(owner);
        let rows: Vec<(String, Vec<String>, Vec<String>)> =
            self.run(Retry::Idempotent, &invocation).await?;
        Ok(pool_views(&self.keys, rows)?.into_iter().collect())
    }

    async fn set_pool_target(&self, pool: &str, target: &PoolTarget) -> Result<(), StoreError> {
        let json = encode(&self.keys, target)?;
        let _: i64 = self
            .query(
                Retry::Idempotent,
                redis::cmd("HSET")
                    .arg(&self.keys.pool_targets)
                    .arg(pool)
                    .arg(json),
            )
            .await?;
        Ok(())
    }

    async fn pool_targets(&self) -> Result<BTreeMap<String, PoolTarget>, StoreError> {
        let stored: HashMap<String, String> = self
            .query(
                Retry::Idempotent,
                redis::cmd("HGETALL").arg(&self.keys.pool_targets),
            )
            .await?;
        stored
            .into_iter()
            .map(|(pool, json)| Ok((pool, decode(&self.keys.pool_targets, &json)?)))
            .collect()
    }

    async fn incr(&self, counter: Counter, by: u64) -> Result<(), StoreError> {
        let by = i64::try_from(by).unwrap_or(i64::MAX);
        let _: i64 = self
            .query(
                Retry::IfUnsent,
                redis::cmd("HINCRBY")
                    .arg(&self.keys.counters)
                    .arg(counter.name())
                    .arg(by),
            )
            .await?;
        Ok(())
    }

    async fn counters(&self) -> Result<Counters, StoreError> {
        let values: Vec<Option<u64>> = self.query(Retry::Idempotent, &self.counters_cmd()).await?;
        Ok(Self::counters_from(values))
    }

    async fn overview(&self) -> Result<(Counters, StoreStats), StoreError> {
        // `info` is the route monitors call most: calls arriving together share one read.
        self.overview_read.get(|| self.read_overview()).await
    }
}
