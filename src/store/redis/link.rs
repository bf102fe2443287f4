//! The connection to Redis: the client made from the configuration, the shared connection
//! every call but a waiting claim goes by, the dedicated connections of waiting claims, the
//! time each call may take and when it is sent again, and what a Redis error means to the
//! store's caller.
//!
//! Every call answers within [`CALL_BUDGET`]: connecting gives up after [`CONNECT_TIMEOUT`],
//! a reply after [`RESPONSE_TIMEOUT`]. A Redis that cannot be reached, refuses the
//! connection or does not answer becomes [`StoreError::Unavailable`]; replies that do not
//! parse, or keys of the wrong type, become [`StoreError::Corrupt`]. The shared connection
//! is one multiplexed RESP3 connection, which reports at once that it closed; the next call
//! then opens a new one, so the store recovers by itself when Redis comes back. A failed
//! call is sent again (within the budget) when no connection could be made (so it was never
//! sent), or when it only reads or sending it twice changes nothing; any other write whose
//! answer was lost is reported, never repeated, since it may have been applied.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, FromRedisValue, IntoConnectionInfo,
    ProtocolVersion, PushInfo, PushKind, RedisConnectionInfo, RedisError, RedisResult, Value,
};
use tokio::time::Instant;

use super::keys::Keys;
use crate::config::StoreConfig;
use crate::store::StoreError;

/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long Redis may take to answer one command on the shared connection.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most any call but a waiting `claim_next` takes, retries included. The REST API must
/// answer within 2 s even when Redis is gone.
pub const CALL_BUDGET: Duration = Duration::from_millis(1500);

/// Attempts per call: the first, then one at once (a dead connection is replaced), then one
/// after a short pause.
const ATTEMPTS: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// When a failed call may be sent again (a call that found no connection always may).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// Only if it was never sent: it changes state, and a lost answer may hide a change
    /// that was made.
    IfUnsent,
    /// After any connection failure: it only reads, or sending it twice leaves the same
    /// state as sending it once.
    Idempotent,
}

/// The connection to one Redis: one multiplexed RESP3 connection shared by every call,
/// replaced when it dies.
///
/// Unlike redis-rs's `ConnectionManager`, this tells apart a call that failed because no
/// connection could be made (so the command was never sent, and may be sent again, even a
/// write) from one that failed after it was sent (a write may have been applied).
pub(super) struct Link {
    client: Client,
    /// `host:port`, for error messages.
    addr: String,
    /// Every key of the namespace, named by errors that cannot tell which key is at fault.
    all_keys: String,
    /// The current connection, and whether it is still open. A plain lock held only to
    /// copy it out: every call reads it, and an async lock here would make concurrent calls
    /// queue behind each other (a task wake-up each) even while the connection is fine.
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
    /// The client for the configured Redis, without reaching it: the first call connects.
    pub(super) fn open(config: &StoreConfig, keys: &Keys) -> Result<Link, StoreError> {
        let addr = format!("{}:{}", config.redis_host, config.redis_port);
        let bad_config =
            |e: RedisError| StoreError::Unavailable(format!("cannot use redis at {addr}: {e}"));
        let mut settings = RedisConnectionInfo::default()
            .set_db(config.redis_db)
            // RESP3: a connection reports its own end (see `get`).
            .set_protocol(ProtocolVersion::RESP3);
        if !config.redis_password.is_empty() {
            settings = settings.set_password(&config.redis_password);
        }
        let info = ConnectionAddr::Tcp(config.redis_host.clone(), config.redis_port)
            .into_connection_info()
            .map_err(bad_config)?
            .set_redis_settings(settings);
        let client = Client::open(info).map_err(bad_config)?;
        Ok(Link {
            client,
            addr,
            all_keys: keys.all(),
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// `host:port`, for error messages.
    pub(super) fn addr(&self) -> &str {
        &self.addr
    }

    /// Runs `op` on the shared connection within [`CALL_BUDGET`], retrying as `retry`
    /// allows, and reads its reply as a `T`.
    pub(super) async fn call<T, F, Fut>(&self, retry: Retry, op: F) -> Result<T, StoreError>
    where
        T: FromRedisValue,
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<Value>>,
    {
        let value = self.attempt(retry, op).await?;
        T::from_redis_value(value).map_err(|e| StoreError::Corrupt {
            // Another shape than the call expects: something else wrote under the namespace.
            key: self.all_keys.clone(),
            message: format!("unexpected reply from redis: {e}"),
        })
    }

    /// A new connection of its own, for a blocking command: its reply may take as long as
    /// the command blocks, so only connecting is bounded here (by [`CALL_BUDGET`]); the
    /// caller bounds the wait for the reply.
    pub(super) async fn dedicated(&self) -> Result<MultiplexedConnection, StoreError> {
        let config = connection_config(None);
        match tokio::time::timeout(
            CALL_BUDGET,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(error)) => Err(self.error(error)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "cannot connect to redis at {} within {} ms",
                self.addr,
                CALL_BUDGET.as_millis()
            ))),
        }
    }

    /// What a Redis error means to the store's caller.
    pub(super) fn error(&self, error: RedisError) -> StoreError {
        if error.code() == Some("WRONGTYPE") {
            // Something else wrote under our namespace.
            StoreError::Corrupt {
                key: self.all_keys.clone(),
                message: error.to_string(),
            }
        } else {
            self.unavailable(error)
        }
    }

    /// A call that Redis did not carry out, and `why`.
    pub(super) fn unavailable(&self, why: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("redis at {}: {why}", self.addr))
    }

    /// `op`'s reply, within [`CALL_BUDGET`] and the retries `retry` allows.
    async fn attempt<F, Fut>(&self, retry: Retry, op: F) -> Result<Value, StoreError>
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
                        self.addr,
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
                return Err(self.error(error));
            }
            attempt += 1;
            tokio::time::sleep(pause).await;
        }
    }

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
        let config = connection_config(Some(RESPONSE_TIMEOUT))
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

/// How every connection is made: connecting bounded by [`CONNECT_TIMEOUT`], each reply by
/// `response_timeout` (none: the caller bounds it).
fn connection_config(response_timeout: Option<Duration>) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(response_timeout)
}

/// A failure to reach Redis, as opposed to an answer we did not like.
pub(super) fn is_unavailable(error: &RedisError) -> bool {
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
