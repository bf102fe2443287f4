//! Shared reads: calls that want the same answer while one read for it is on its way wait
//! for that read instead of each making their own.
//!
//! Used for `/info` with Redis, the route monitors and dashboards call most: under load, each
//! call's round trip costs this process and Redis a read and a write, and sixteen clients
//! asking at once need only one. An answer is then never older than the read that was on
//! its way when the call arrived (at most one round trip to the store); a call arriving
//! after a read completed starts a new one.

use std::future::Future;
use std::sync::Mutex;

use tokio::sync::watch;

/// One read at a time, shared by every call that arrives while it is on its way.
pub struct SharedRead<T: Clone> {
    /// The read on its way, if any: its answer appears here.
    on_its_way: Mutex<Option<watch::Receiver<Option<T>>>>,
}

impl<T: Clone> Default for SharedRead<T> {
    fn default() -> Self {
        SharedRead {
            on_its_way: Mutex::new(None),
        }
    }
}

impl<T: Clone> SharedRead<T> {
    /// The answer of the read on its way, or of `read` started now. If the call making the
    /// shared read is cancelled (its client went away), the calls waiting on it make their
    /// own.
    pub async fn get<F, Fut>(&self, read: F) -> T
    where
        F: Fn() -> Fut,
        Fut: Future<Output = T>,
    {
        let answer = {
            let mut slot = self.lock();
            match slot.as_ref() {
                Some(receiver) => Err(receiver.clone()),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    *slot = Some(receiver);
                    Ok(sender)
                }
            }
        };
        match answer {
            Ok(sender) => {
                let clear = Clear(self);
                let value = read().await;
                // Calls arriving from now on start a read of their own.
                drop(clear);
                sender.send_replace(Some(value.clone()));
                value
            }
            Err(mut receiver) => {
                if let Ok(value) = receiver.wait_for(Option::is_some).await
                    && let Some(value) = value.clone()
                {
                    return value;
                }
                read().await
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<watch::Receiver<Option<T>>>> {
        // Holds no invariant a panic could break.
        self.on_its_way.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Empties the slot when the shared read ends, completed or cancelled.
struct Clear<'a, T: Clone>(&'a SharedRead<T>);

impl<T: Clone> Drop for Clear<'_, T> {
    fn drop(&mut self) {
        *self.0.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    /// A read that takes 10 ms and answers how many reads were made, itself included.
    fn counting_read(reads: &Arc<AtomicU32>) -> impl Fn() -> BoxFuture<u32> + Clone + use<> {
        let reads = reads.clone();
        move || {
            let reads = reads.clone();
            Box::pin(async move {
                let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                n
            })
        }
    }

    type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

    /// A call of `shared.get(read)` in a task of its own.
    fn spawn_get(
        shared: &Arc<SharedRead<u32>>,
        read: impl Fn() -> BoxFuture<u32> + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<u32> {
        let shared = shared.clone();
        tokio::spawn(async move { shared.get(read).await })
    }

    #[tokio::test(start_paused = true)]
    async fn calls_arriving_while_a_read_is_on_its_way_share_it() {
        let shared = Arc::new(SharedRead::<u32>::default());
        let reads = Arc::new(AtomicU32::new(0));
        let read = counting_read(&reads);
        let calls: Vec<_> = (0..8).map(|_| spawn_get(&shared, read.clone())).collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), 1);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // A call after the read completed makes a new one.
        assert_eq!(shared.get(read).await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_read_leaves_the_waiting_calls_to_read_for_themselves() {
        let shared = Arc::new(SharedRead::<u32>::default());
        let reads = Arc::new(AtomicU32::new(0));
        let read = counting_read(&reads);
        let first = spawn_get(&shared, read.clone());
        tokio::time::sleep(Duration::from_millis(1)).await;
        let second = spawn_get(&shared, read.clone());
        tokio::time::sleep(Duration::from_millis(1)).await;
        first.abort();
        assert_eq!(second.await.unwrap(), 2);
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }
}
