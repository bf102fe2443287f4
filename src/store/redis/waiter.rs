//! Waiting for work: how a `claim_next` that finds the queue empty sleeps until a job is
//! queued, without polling.
//!
//! It waits with `BLMOVE <ns>:queue <ns>:queue LEFT LEFT <timeout>` on a connection of its
//! own (a blocking command would stall every other call on the shared multiplexed
//! connection). Moving the head of the queue onto itself changes nothing: the command is
//! only a wake-up, and the job is then taken by the claim script. So a claimer that is
//! cancelled while waiting (its future dropped, its connection closed) cannot leave a job
//! half taken, and a job queued or requeued wakes the waiters at once. Requires Redis 6.2 or
//! newer (`BLMOVE`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;

use super::link::{Link, is_unavailable};
use crate::store::StoreError;

/// The longest single wait of `claim_next` (a year): longer ones are cut to this.
pub(super) const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
/// Waits shorter than this are not worth a blocking command (and `BLMOVE` reads a timeout
/// of 0 as "forever").
pub(super) const MIN_BLOCK: Duration = Duration::from_millis(1);
/// How much longer than its own timeout a `BLMOVE` may take before the server is taken for
/// unreachable.
const BLOCKING_GRACE: Duration = Duration::from_secs(2);
/// Idle blocking connections kept for the next waiting `claim_next`.
const IDLE_BLOCKING_CONNECTIONS: usize = 8;

/// Waits for the queue, on dedicated connections kept between waits.
pub(super) struct Waiter {
    /// Opens the dedicated connections.
    link: Arc<Link>,
    /// The queue's key.
    queue: String,
    /// Dedicated connections for `BLMOVE`, idle between waits.
    idle: Mutex<Vec<MultiplexedConnection>>,
}

impl Waiter {
    pub(super) fn new(link: Arc<Link>, queue: String) -> Waiter {
        Waiter {
            link,
            queue,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Blocks until the queue has an entry or `wait` passes, without taking anything.
    /// False when the time ran out.
    pub(super) async fn wait(&self, wait: Duration) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("BLMOVE");
        cmd.arg(&self.queue)
            .arg(&self.queue)
            .arg("LEFT")
            .arg("LEFT")
            // Milliseconds, never 0 (which would mean forever).
            .arg(format!(
                "{:.3}",
                wait.clamp(MIN_BLOCK, FOREVER).as_secs_f64()
            ));
        let mut retried = false;
        loop {
            let (mut conn, reused) = self.connection().await?;
            match tokio::time::timeout(
                wait.saturating_add(BLOCKING_GRACE),
                cmd.query_async::<Value>(&mut conn),
            )
            .await
            {
                Ok(Ok(value)) => {
                    self.give_back(conn);
                    return Ok(!matches!(value, Value::Nil));
                }
                // An idle connection may have died with a Redis restart; BLMOVE of the queue
                // onto itself changes nothing, so it can simply be sent again.
                Ok(Err(error)) if reused && !retried && is_unavailable(&error) => {
                    retried = true;
                }
                Ok(Err(error)) => return Err(self.link.error(error)),
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "redis at {} stopped answering while a claim waited",
                        self.link.addr()
                    )));
                }
            }
        }
    }

    /// An idle dedicated connection, or a new one. True when reused.
    async fn connection(&self) -> Result<(MultiplexedConnection, bool), StoreError> {
        if let Some(conn) = self.lock_idle().pop() {
            return Ok((conn, true));
        }
        Ok((self.link.dedicated().await?, false))
    }

    fn give_back(&self, conn: MultiplexedConnection) {
        let mut idle = self.lock_idle();
        if idle.len() < IDLE_BLOCKING_CONNECTIONS {
            idle.push(conn);
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<MultiplexedConnection>> {
        // The vector holds no invariant a panic could break.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
