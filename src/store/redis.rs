//! The Redis store: durable, and shared by every `tango serve` and `tango manager` process
//! that points at the same Redis and namespace, on any host.
//!
//! Each [`JobStore`] method is one Lua script, one command, or one `MULTI` block (a waiting
//! `claim_next` repeats one claim script between waits; `add_job`s made together share one
//! script call, see `adds`), so other clients never see half of a change. Values are JSON
//! (`serde_json` of [`Job`], [`Machine`], [`PoolTarget`]), never a language pickle.
//!
//! # Key layout
//!
//! Every key starts with `<ns>:` (`store.namespace`, `tango` by default), so one Redis can
//! serve several deployments, and Python Tango's keys (`liveJobs`, `queue:…`, pickled
//! values) are never read or written. In the names below, `<owner>` and `<pool>` are escaped (`%` → `%25`,
//! `:` → `%3A`) so that an owner or pool name containing `:` cannot reach another's key.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<ns>:next-job-id` | string | the last job id handed out (`INCR`) |
//! | `<ns>:vm-ids` | string | how many machine ids were handed out; id = 999 + `INCR` |
//! | `<ns>:live` | hash | job id → job JSON, for every live job |
//! | `<ns>:lease` | hash | job id → the manager holding it (claimed, not yet requeued or finished) |
//! | `<ns>:assigned` | set | ids of live jobs dispatched to a machine |
//! | `<ns>:queue` | list | ids of unassigned jobs, head first |
//! | `<ns>:claimed:<owner>` | sorted set | ids a manager holds (score = id, for requeueing in order) |
//! | `<ns>:claimers` | set | managers with a `claimed:` set, so claims of a manager that never heartbeat are found |
//! | `<ns>:owners` | sorted set | manager → when its lease runs out (ms, Redis server clock) |
//! | `<ns>:dead` | hash | job id → job JSON, for finished and rejected jobs |
//! | `<ns>:dead-order` | list | dead job ids, oldest first, for trimming beyond `max_dead` |
//! | `<ns>:pools:<owner>` | set | names of a manager's pools |
//! | `<ns>:pool:<owner>:<pool>:total` | list | ids of the pool's machines, in the order added |
//! | `<ns>:pool:<owner>:<pool>:free` | list | ids of its free machines, oldest first |
//! | `<ns>:pool:<owner>:<pool>:machines` | hash | machine id → machine JSON |
//! | `<ns>:pool-targets` | hash | pool → what `/prealloc` asked for (JSON) |
//! | `<ns>:counters` | hash | `/info` counter name → integer |
//!
//! A live job's `owner` and `assigned` are kept outside its JSON (`lease`, `assigned`) and
//! laid over it when it is read: reaping a dead manager then changes them without decoding
//! and re-encoding job JSON in Lua (whose number formatting would lose precision). The copies
//! of those two fields inside the stored JSON are whatever the last writer sent; ignore them.
//!
//! Scripts build the per-owner key names themselves, from the namespace they are given, so
//! this store needs a single Redis (or a primary with replicas), not Redis Cluster.
//!
//! # Waiting for work
//!
//! [`JobStore::claim_next`] waits with `BLMOVE <ns>:queue <ns>:queue LEFT LEFT <timeout>`
//! on a connection of its own (a blocking command would stall every other call on the shared
//! multiplexed connection). Moving the head of the queue onto itself changes nothing: the
//! command is only a wake-up that costs no polling, and the job is then taken by the claim
//! script. So a claimer that is cancelled while waiting (its future dropped, its connection
//! closed) cannot leave a job half taken, and a job queued or requeued wakes the waiters at
//! once. Requires Redis 6.2 or newer (`BLMOVE`).
//!
//! # Failures
//!
//! Every call answers within [`CALL_BUDGET`]: connecting gives up after [`CONNECT_TIMEOUT`],
//! a reply after [`RESPONSE_TIMEOUT`]. A Redis that cannot be reached, refuses the
//! connection or does not answer becomes [`StoreError::Unavailable`]; JSON or replies that
//! do not parse, or keys of the wrong type, become [`StoreError::Corrupt`]. The shared
//! connection is one multiplexed RESP3 connection, which reports at once that it closed; the
//! next call then opens a new one, so the store recovers by itself when Redis comes back. A
//! failed call is sent again (within the budget) when no connection could be made (so it was
//! never sent), or when it only reads or sending it twice changes nothing; any other write
//! whose answer was lost is reported, never repeated, since it may have been applied.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use memchr::memmem;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, FromRedisValue, IntoConnectionInfo,
    ProtocolVersion, PushInfo, PushKind, RedisConnectionInfo, RedisError, RedisResult, Script,
    ScriptInvocation, Value,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

mod adds;
mod scripts;

use scripts::SCRIPTS;

use super::flight::SharedRead;
use super::{JobStore, Reaped, StoreError, StoreStats, added_line};
use crate::config::StoreConfig;
use crate::model::{Counter, Counters, Job, JobId, Machine, PoolTarget, PoolView, ctime, unix_now};

/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long Redis may take to answer one command on the shared connection.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most any call but a waiting `claim_next` takes, retries included. The REST API must
/// answer within 2 s even when Redis is gone.
pub const CALL_BUDGET: Duration = Duration::from_millis(1500);
/// How much longer than its own timeout a `BLMOVE` may take before the server is taken for
/// unreachable.
const BLOCKING_GRACE: Duration = Duration::from_secs(2);
/// Idle blocking connections kept for the next waiting `claim_next`.
const IDLE_BLOCKING_CONNECTIONS: usize = 8;
/// The longest single wait of `claim_next` (a year): longer ones are cut to this.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
/// Waits shorter than this are not worth a blocking command (and `BLMOVE` reads a timeout
/// of 0 as "forever").
const MIN_BLOCK: Duration = Duration::from_millis(1);

/// The store on one Redis, under one namespace.
pub struct RedisStore {
    /// Opens the dedicated connections of waiting claimers.
    client: Client,
    /// The shared, multiplexed connection every other call uses.
    link: Arc<Link>,
    keys: Keys,
    /// Dedicated connections for `BLMOVE`, idle between waits.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    /// `host:port`, for error messages.
    addr: String,
    /// `overview` reads on their way, shared by the calls arriving meanwhile.
    overview_read: SharedRead<Result<(Counters, StoreStats), StoreError>>,
    /// New jobs on their way to Redis together (`add_job`).
    adds: Arc<adds::Adds>,
}

/// The shared connection: one multiplexed RESP3 connection, replaced when it dies.
///
/// Unlike redis-rs's `ConnectionManager`, this tells apart a call that failed because no
/// connection could be made (so the command was never sent, and may be sent again, even a
/// write) from one that failed after it was sent (a write may have been applied).
struct Link {
    client: Client,
    /// The current connection, and whether it is still open. A plain lock held only to
    /// copy it out: every call reads it, and an async lock here made concurrent calls queue
    /// behind each other (a task wake-up each) even while the connection was fine.
    current: Mutex<Option<(MultiplexedConnection, Arc<AtomicBool>)>>,
    /// Held across a connection attempt, so that concurrent callers wait for one attempt
    /// instead of starting many.
    connecting: tokio::sync::Mutex<()>,
}

/// Why an attempt failed.
enum Failure {
    /// No connection: the command was not sent.
    Unsent(RedisError),
    /// The command was sent (or partly sent): it may have been applied.
    Sent(RedisError),
}

impl Link {
    /// The open connection, or a new one. The flag goes false when the connection closes.
    async fn get(&self) -> Result<(MultiplexedConnection, Arc<AtomicBool>), RedisError> {
        if let Some(open) = self.open_now() {
            return Ok(open);
        }
        let _connecting = self.connecting.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(open) = self.open_now() {
            return Ok(open);
        }
        let open = Arc::new(AtomicBool::new(true));
        let flag = open.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            // RESP3 connections report their own end at once (the server closed it, or it
            // broke), so the next call reconnects instead of failing on a dead socket.
            .set_push_sender(move |info: PushInfo| {
                if info.kind == PushKind::Disconnection {
                    flag.store(false, Ordering::Release);
                }
                Ok::<(), std::convert::Infallible>(())
            });
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *self.lock_current() = Some((conn.clone(), open.clone()));
        Ok((conn, open))
    }

    /// Runs `op` on the shared connection within [`CALL_BUDGET`], retrying as `retry` allows.
    async fn call<F, Fut>(
        &self,
        ns: &str,
        addr: &str,
        retry: Retry,
        op: F,
    ) -> Result<Value, StoreError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<Value>>,
    {
        let deadline = Instant::now() + CALL_BUDGET;
        let mut attempt = 1;
        loop {
            let tried = async {
                let (conn, open) = self.get().await.map_err(Failure::Unsent)?;
                op(conn).await.map_err(|error| {
                    if error.is_unrecoverable_error() {
                        // Do not send anything more on it; the next call reconnects.
                        open.store(false, Ordering::Release);
                    }
                    Failure::Sent(error)
                })
            };
            let (error, may_retry) = match tokio::time::timeout_at(deadline, tried).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(Failure::Unsent(error))) => (error, true),
                Ok(Err(Failure::Sent(error))) => {
                    let may_retry = retry == Retry::Idempotent && is_unavailable(&error);
                    (error, may_retry)
                }
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "redis at {} did not answer within {} ms",
                        addr,
                        CALL_BUDGET.as_millis()
                    )));
                }
            };
            let pause = if attempt == 1 {
                Duration::ZERO
            } else {
                RETRY_PAUSE
            };
            if !may_retry || attempt >= ATTEMPTS || Instant::now() + pause >= deadline {
                return Err(store_error(ns, addr, error));
            }
            attempt += 1;
            tokio::time::sleep(pause).await;
        }
    }

    /// The current connection if it is still open.
    fn open_now(&self) -> Option<(MultiplexedConnection, Arc<AtomicBool>)> {
        let current = self.lock_current();
        match &*current {
            Some((conn, open)) if open.load(Ordering::Acquire) => {
                Some((conn.clone(), open.clone()))
            }
            _ => None,
        }
    }

    fn lock_current(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<(MultiplexedConnection, Arc<AtomicBool>)>> {
        // Only ever replaced whole: a panic cannot leave it half written.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The names of the keys the Rust side uses directly (scripts derive the rest).
#[derive(Clone)]
struct Keys {
    ns: String,
    next_job_id: String,
    vm_ids: String,
    live: String,
    lease: String,
    assigned: String,
    queue: String,
    dead: String,
    dead_order: String,
    pool_targets: String,
    counters: String,
}

impl Keys {
    fn new(ns: &str) -> Keys {
        let key = |name: &str| format!("{ns}:{name}");
        Keys {
            ns: ns.to_string(),
            next_job_id: key("next-job-id"),
            vm_ids: key("vm-ids"),
            live: key("live"),
            lease: key("lease"),
            assigned: key("assigned"),
            queue: key("queue"),
            dead: key("dead"),
            dead_order: key("dead-order"),
            pool_targets: key("pool-targets"),
            counters: key("counters"),
        }
    }
}

/// When a failed call may be sent again (a call that found no connection always may).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Only if it was never sent: it changes state, and a lost answer may hide a change
    /// that was made.
    IfUnsent,
    /// After any connection failure: it only reads, or sending it twice leaves the same
    /// state as sending it once.
    Idempotent,
}

/// Attempts per call: the first, then one at once (a dead connection is replaced), then one
/// after a short pause.
const ATTEMPTS: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(50);

// ---- connecting ----

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
        let addr = format!("{}:{}", config.redis_host, config.redis_port);
        let bad_config =
            |e: RedisError| StoreError::Unavailable(format!("cannot use redis at {addr}: {e}"));
        let mut settings = RedisConnectionInfo::default()
            .set_db(config.redis_db)
            // RESP3: a connection reports its own end (see `Link`).
            .set_protocol(ProtocolVersion::RESP3);
        if !config.redis_password.is_empty() {
            settings = settings.set_password(&config.redis_password);
        }
        let info = ConnectionAddr::Tcp(config.redis_host.clone(), config.redis_port)
            .into_connection_info()
            .map_err(bad_config)?
            .set_redis_settings(settings);
        let client = Client::open(info).map_err(bad_config)?;
        let link = Arc::new(Link {
            client: client.clone(),
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        });
        let keys = Keys::new(&config.namespace);
        Ok(RedisStore {
            adds: Arc::new(adds::Adds::new(link.clone(), keys.clone(), addr.clone())),
            link,
            client,
            keys,
            blocking: Mutex::new(Vec::new()),
            addr,
            overview_read: SharedRead::default(),
        })
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
            .llen(&self.keys.queue);
        let (values, live, dead, queued): (Vec<Option<u64>>, u64, u64, u64) =
            self.snapshot(&pipe).await?;
        Ok((
            Self::counters_from(values),
            StoreStats { live, dead, queued },
        ))
    }

    // ---- calling Redis ----

    /// Runs `op` on the shared connection within [`CALL_BUDGET`], retrying as `retry` allows.
    async fn call<F, Fut>(&self, retry: Retry, op: F) -> Result<Value, StoreError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<Value>>,
    {
        self.link.call(&self.keys.ns, &self.addr, retry, op).await
    }

    async fn run<T: FromRedisValue>(
        &self,
        retry: Retry,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let value = self
            .call(retry, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        self.convert(value)
    }

    async fn query<T: FromRedisValue>(
        &self,
        retry: Retry,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let value = self
            .call(
                retry,
                |mut conn| async move { cmd.query_async(&mut conn).await },
            )
            .await?;
        self.convert(value)
    }

    /// Runs a read-only `MULTI` block: a consistent snapshot of several keys.
    async fn snapshot<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let value = self
            .call(Retry::Idempotent, |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        self.convert(value)
    }

    fn convert<T: FromRedisValue>(&self, value: Value) -> Result<T, StoreError> {
        convert(&self.keys.ns, value)
    }

    fn error(&self, error: RedisError) -> StoreError {
        store_error(&self.keys.ns, &self.addr, error)
    }

    /// A script invocation with the namespace as ARGV[1].
    fn invocation<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&self.keys.ns);
        invocation
    }

    // ---- waiting for the queue ----

    /// Blocks until the queue has an entry or `wait` passes, without taking anything.
    /// False when the time ran out.
    async fn wait_for_queue(&self, wait: Duration) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("BLMOVE");
        cmd.arg(&self.keys.queue)
            .arg(&self.keys.queue)
            .arg("LEFT")
            .arg("LEFT")
            // Milliseconds, never 0 (which would mean forever).
            .arg(format!(
                "{:.3}",
                wait.clamp(MIN_BLOCK, FOREVER).as_secs_f64()
            ));
        let mut retried = false;
        loop {
            let (mut conn, reused) = self.blocking_connection().await?;
            match tokio::time::timeout(
                wait.saturating_add(BLOCKING_GRACE),
                cmd.query_async::<Value>(&mut conn),
            )
            .await
            {
                Ok(Ok(value)) => {
                    self.return_blocking_connection(conn);
                    return Ok(!matches!(value, Value::Nil));
                }
                // An idle connection may have died with a Redis restart; BLMOVE of the queue
                // onto itself changes nothing, so it can simply be sent again.
                Ok(Err(error)) if reused && !retried && is_unavailable(&error) => {
                    retried = true;
                }
                Ok(Err(error)) => return Err(self.error(error)),
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "redis at {} stopped answering while a claim waited",
                        self.addr
                    )));
                }
            }
        }
    }

    /// An idle dedicated connection, or a new one. True when reused.
    async fn blocking_connection(&self) -> Result<(MultiplexedConnection, bool), StoreError> {
        if let Some(conn) = self.lock_blocking().pop() {
            return Ok((conn, true));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // The wait is bounded by the caller's own timeout instead.
            .set_response_timeout(None);
        match tokio::time::timeout(
            CALL_BUDGET,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(conn)) => Ok((conn, false)),
            Ok(Err(error)) => Err(self.error(error)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "cannot connect to redis at {} within {} ms",
                self.addr,
                CALL_BUDGET.as_millis()
            ))),
        }
    }

    fn return_blocking_connection(&self, conn: MultiplexedConnection) {
        let mut idle = self.lock_blocking();
        if idle.len() < IDLE_BLOCKING_CONNECTIONS {
            idle.push(conn);
        }
    }

    fn lock_blocking(&self) -> std::sync::MutexGuard<'_, Vec<MultiplexedConnection>> {
        // The vector holds no invariant a panic could break.
        self.blocking
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the head of the queue for `owner` now, if there is one.
    async fn try_claim(&self, owner: &str) -> Result<Option<Job>, StoreError> {
        let mut invocation = self.invocation(&SCRIPTS.claim);
        invocation.arg(owner);
        let claimed: Option<(String, bool)> = self.run(Retry::IfUnsent, &invocation).await?;
        let Some((json, assigned)) = claimed else {
            return Ok(None);
        };
        let mut job: Job = self.decode(&self.keys.live, &json)?;
        job.owner = Some(owner.to_string());
        job.assigned = assigned;
        Ok(Some(job))
    }

    // ---- values ----

    fn encode<T: Serialize>(&self, value: &T) -> Result<String, StoreError> {
        // Our model types always serialize; this guards against a future field that does not.
        serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
            key: format!("{}:*", self.keys.ns),
            message: format!("cannot encode a value as JSON: {e}"),
        })
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, json: &str) -> Result<T, StoreError> {
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            message: e.to_string(),
        })
    }

    fn parse_id(&self, key: &str, id: &str) -> Result<u64, StoreError> {
        id.parse().map_err(|_| StoreError::Corrupt {
            key: key.to_string(),
            message: format!("{id:?} is not an id"),
        })
    }

    fn parse_ids(&self, key: &str, ids: &[String]) -> Result<Vec<u64>, StoreError> {
        ids.iter().map(|id| self.parse_id(key, id)).collect()
    }

    /// A stored job with its lease laid over it.
    fn live(&self, json: &str, owner: Option<String>, assigned: bool) -> Result<Job, StoreError> {
        let mut job: Job = self.decode(&self.keys.live, json)?;
        job.owner = owner;
        job.assigned = assigned;
        Ok(job)
    }

    /// `job` as it is stored once it leaves the live jobs or the lease.
    fn released(job: &Job) -> Job {
        let mut job = job.clone();
        job.owner = None;
        job.assigned = false;
        job
    }

    fn views(
        &self,
        rows: Vec<(String, Vec<String>, Vec<String>)>,
    ) -> Result<Vec<(String, PoolView)>, StoreError> {
        rows.into_iter()
            .map(|(pool, total, free)| {
                let key = format!("{}:pool:*:{pool}", self.keys.ns);
                Ok((
                    pool.clone(),
                    PoolView {
                        total: self.parse_ids(&key, &total)?,
                        free: self.parse_ids(&key, &free)?,
                    },
                ))
            })
            .collect()
    }

    /// Machines handed back by a script as owner, pool, id, JSON (or nil) quadruples.
    fn machines(&self, flat: Vec<Option<String>>) -> Result<Vec<Machine>, StoreError> {
        let mut machines = Vec::with_capacity(flat.len() / 4);
        for entry in flat.chunks(4) {
            let [Some(owner), Some(pool), Some(id), json] = entry else {
                return Err(StoreError::Corrupt {
                    key: format!("{}:pool:*", self.keys.ns),
                    message: "a pool machine came back without owner, pool or id".into(),
                });
            };
            let key = format!("{}:pool:{owner}:{pool}:machines", self.keys.ns);
            let id = self.parse_id(&key, id)?;
            let mut machine = match json {
                Some(json) => self.decode(&key, json)?,
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
}

/// Stands for a new job's id in its trace while Redis has yet to choose the id. A NUL can
/// reach JSON only escaped (`\u0000`), so the marker's JSON form is as unlikely in a job's
/// own text as any string can be; [`new_job_parts`] checks that it is absent all the same.
const NEW_ID_MARK: &str = "\u{0}tango-new-job-id\u{0}";

/// The JSON of a new job encoded with id 0 and [`NEW_ID_MARK`] in its last trace line, cut
/// where the id goes, so that joining the parts with the id gives the job's JSON with that
/// id: `{"id":` / everything up to the marker / the rest. `None` when the JSON does not
/// start with the id, or the marker's JSON form appears other than once.
fn new_job_parts(json: &str) -> Option<[&str; 3]> {
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

/// A reply as the type a call expects; another shape means something else wrote under
/// namespace `ns`.
fn convert<T: FromRedisValue>(ns: &str, value: Value) -> Result<T, StoreError> {
    T::from_redis_value(value).map_err(|e| StoreError::Corrupt {
        key: format!("{ns}:*"),
        message: format!("unexpected reply from redis: {e}"),
    })
}

/// What a Redis error means to the store's caller.
fn store_error(ns: &str, addr: &str, error: RedisError) -> StoreError {
    if error.code() == Some("WRONGTYPE") {
        // Something else wrote under our namespace.
        StoreError::Corrupt {
            key: format!("{ns}:*"),
            message: error.to_string(),
        }
    } else {
        StoreError::Unavailable(format!("redis at {addr}: {error}"))
    }
}

/// A failure to reach Redis, as opposed to an answer we did not like.
fn is_unavailable(error: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
            )
        )
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
        let json = self.encode(&Self::released(job))?;
        let mut invocation = self.invocation(&SCRIPTS.enqueue);
        invocation.arg(job.id).arg(json).arg(max_queued);
        let full: i64 = self.run(Retry::IfUnsent, &invocation).await?;
        if full >= 0 {
            return Err(StoreError::QueueFull(full as u64));
        }
        Ok(())
    }

    async fn add_job(&self, job: &mut Job, max_queued: u64) -> Result<(), StoreError> {
        let mut stored = Self::released(job);
        stored.id = 0;
        stored.timings.added = Some(unix_now());
        let stamp = ctime(Utc::now());
        stored.trace_stamped(&stamp, added_line(&stored.name, NEW_ID_MARK));
        let json = self.encode(&stored)?;
        // The usual case: Redis takes the id and writes it into the JSON, in one call with
        // the other jobs being added meanwhile.
        if let Some([_, before, after]) = new_job_parts(&json) {
            let (added, value) = self.adds.add(before, after, max_queued).await?;
            if !added {
                return Err(StoreError::QueueFull(value));
            }
            stored.id = value;
            // The line as Redis wrote it, made again rather than searched for the marker.
            stored.trace.pop();
            stored.trace_stamped(&stamp, added_line(&stored.name, value));
            *job = stored;
            return Ok(());
        }
        // The job's own text holds the marker: take the id first (a second round trip, and
        // an id used even if the queue turns out full) and send the whole JSON.
        let id = self.allocate_job_id().await?;
        let mut whole = Self::released(job);
        whole.id = id;
        whole.timings = stored.timings;
        whole.trace_stamped(&stamp, added_line(&whole.name, id));
        let mut invocation = SCRIPTS.add_job.prepare_invoke();
        let keys = &self.keys;
        invocation
            .key(&keys.counters)
            .key(&keys.queue)
            .key(&keys.live)
            .key(&keys.lease)
            .key(&keys.assigned);
        invocation
            .arg(Counter::JobRequests.name())
            .arg(max_queued)
            .arg(id)
            .arg(self.encode(&whole)?);
        let (added, value): (bool, u64) = self.run(Retry::IfUnsent, &invocation).await?;
        if !added {
            return Err(StoreError::QueueFull(value));
        }
        *job = whole;
        Ok(())
    }

    async fn claim_next(&self, owner: &str, wait: Duration) -> Result<Option<Job>, StoreError> {
        // A wait too long to add to the clock (`Duration::MAX`) waits as good as forever.
        let deadline = Instant::now()
            .checked_add(wait)
            .unwrap_or_else(|| Instant::now() + FOREVER);
        loop {
            if let Some(job) = self.try_claim(owner).await? {
                return Ok(Some(job));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < MIN_BLOCK || !self.wait_for_queue(remaining).await? {
                return Ok(None);
            }
            // Something was queued; another manager may take it first, so claim and
            // maybe wait again.
        }
    }

    async fn update_live(&self, job: &Job) -> Result<(), StoreError> {
        let Some(owner) = job.owner.as_deref() else {
            return Err(StoreError::LeaseLost(job.id));
        };
        let json = self.encode(job)?;
        let mut invocation = self.invocation(&SCRIPTS.update_live);
        invocation
            .arg(job.id)
            .arg(owner)
            .arg(json)
            .arg(if job.assigned { "1" } else { "0" });
        // Writing the same job twice leaves the same state: safe to resend.
        let held: bool = self.run(Retry::Idempotent, &invocation).await?;
        if held {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(job.id))
        }
    }

    async fn requeue(&self, job: &Job) -> Result<(), StoreError> {
        let Some(owner) = job.owner.as_deref() else {
            return Err(StoreError::LeaseLost(job.id));
        };
        let json = self.encode(&Self::released(job))?;
        let mut invocation = self.invocation(&SCRIPTS.requeue);
        invocation.arg(job.id).arg(owner).arg(json);
        let held: bool = self.run(Retry::IfUnsent, &invocation).await?;
        if held {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(job.id))
        }
    }

    async fn finish(&self, job: &Job, max_dead: u64) -> Result<(), StoreError> {
        let Some(owner) = job.owner.as_deref() else {
            return Err(StoreError::LeaseLost(job.id));
        };
        let json = self.encode(&Self::released(job))?;
        let mut invocation = self.invocation(&SCRIPTS.finish);
        invocation.arg(job.id).arg(owner).arg(json).arg(max_dead);
        let held: bool = self.run(Retry::IfUnsent, &invocation).await?;
        if held {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(job.id))
        }
    }

    async fn add_dead(&self, job: &Job, max_dead: u64) -> Result<(), StoreError> {
        let json = self.encode(&Self::released(job))?;
        let mut invocation = self.invocation(&SCRIPTS.add_dead);
        invocation.arg(job.id).arg(json).arg(max_dead);
        let _: i64 = self.run(Retry::IfUnsent, &invocation).await?;
        Ok(())
    }

    async fn update_dead(&self, job: &Job) -> Result<bool, StoreError> {
        let json = self.encode(job)?;
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
        json.map(|json| self.live(&json, owner, assigned))
            .transpose()
    }

    async fn dead_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let json: Option<String> = self
            .query(
                Retry::Idempotent,
                redis::cmd("HGET").arg(&self.keys.dead).arg(id),
            )
            .await?;
        json.map(|json| self.decode(&self.keys.dead, &json))
            .transpose()
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
            jobs.push(self.live(&json, owner, assigned.contains(&id))?);
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
            .map(|json| self.decode(&self.keys.dead, &json))
            .collect()
    }

    async fn queued_ids(&self) -> Result<Vec<JobId>, StoreError> {
        let ids: Vec<String> = self
            .query(
                Retry::Idempotent,
                redis::cmd("LRANGE").arg(&self.keys.queue).arg(0).arg(-1),
            )
            .await?;
        self.parse_ids(&self.keys.queue, &ids)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hlen(&self.keys.live)
            .hlen(&self.keys.dead)
            .llen(&self.keys.queue);
        let (live, dead, queued): (u64, u64, u64) = self.snapshot(&pipe).await?;
        Ok(StoreStats { live, dead, queued })
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
        self.parse_ids(&self.keys.queue, &ids)
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
            requeued: self.parse_ids(&self.keys.queue, &ids)?,
            machines: self.machines(machines)?,
        })
    }

    async fn pool_add(&self, owner: &str, pool: &str, vm: &Machine) -> Result<(), StoreError> {
        let json = self.encode(vm)?;
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
        let json = self.encode(vm)?;
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
        let key = format!("{}:pool:{owner}:{pool}:machines", self.keys.ns);
        let Some(json) = json else {
            return Err(StoreError::Corrupt {
                key,
                message: format!("free machine {id} has no stored description"),
            });
        };
        self.decode(&key, &json).map(Some)
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
        for (pool, view) in self.views(rows)? {
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
        Ok(self.views(rows)?.into_iter().collect())
    }

    async fn set_pool_target(&self, pool: &str, target: &PoolTarget) -> Result<(), StoreError> {
        let json = self.encode(target)?;
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
            .map(|(pool, json)| Ok((pool, self.decode(&self.keys.pool_targets, &json)?)))
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

#[cfg(test)]
mod tests {
    use super::*;

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
