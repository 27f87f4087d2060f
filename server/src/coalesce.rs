//! In-process singleflight: concurrent requests for one key share one fetch
//! and one result (or one error).
//!
//! The fetch runs in its own task, so a caller that gives up (deadline,
//! disconnect) does not cancel it for the others, and the task removes its
//! own entry when done, so a finished flight is never joined by a later
//! caller.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;

/// The fetch task panicked or was aborted; its callers get this error
/// (through `E: From<Panicked>`) once, and the key is free again.
#[derive(Debug, Clone, thiserror::Error)]
#[error("fetch task failed: {0}")]
pub struct Panicked(pub String);

/// A flight under way: every caller of one key awaits a clone of it.
pub type Joined<T, E> = Shared<BoxFuture<'static, Result<T, E>>>;

/// Flight ids, so a finished flight removes only itself from the map (a
/// purge may have detached it and a newer flight taken its place).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Flights under way by key, each with its id.
type FlightMap<T, E> = HashMap<String, (u64, Joined<T, E>)>;

pub struct Singleflight<T, E> {
    inflight: Arc<Mutex<FlightMap<T, E>>>,
}

impl<T, E> Clone for Singleflight<T, E> {
    /// Another handle on the same set of flights.
    fn clone(&self) -> Self {
        Singleflight { inflight: self.inflight.clone() }
    }
}

impl<T, E> Default for Singleflight<T, E> {
    fn default() -> Self {
        Singleflight { inflight: Arc::default() }
    }
}

/// Whether a caller started the fetch or joined one under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

/// Removes a flight from the map when its task ends, however it ends.
struct Done<T, E> {
    inflight: Arc<Mutex<FlightMap<T, E>>>,
    key: String,
    id: u64,
}

impl<T, E> Drop for Done<T, E> {
    fn drop(&mut self) {
        let mut map = self.inflight.lock();
        if map.get(&self.key).is_some_and(|(i, _)| *i == self.id) {
            map.remove(&self.key);
        }
    }
}

impl<T, E> Singleflight<T, E>
where
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + From<Panicked> + 'static,
{
    /// Runs `make()`'s future for `key` unless one is already under way, and
    /// waits for its result. (The cache uses [`Singleflight::join`], to
    /// count its followers' waits.)
    #[cfg(test)]
    pub async fn run<F, M>(&self, key: &str, make: M) -> (Result<T, E>, Role)
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let (flight, role) = self.join(key, make);
        (flight.await, role)
    }

    /// Like [`Singleflight::run`], but hands back the flight to await, so
    /// the caller can observe the wait (a follower's waiting time, say).
    pub fn join<F, M>(&self, key: &str, make: M) -> (Joined<T, E>, Role)
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let mut map = self.inflight.lock();
        if let Some((_, f)) = map.get(key) {
            return (f.clone(), Role::Follower);
        }
        let inflight = self.inflight.clone();
        let owned_key = key.to_string();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let fut = make();
        let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
            let _done = Done { inflight, key: owned_key, id };
            fut.await
        }));
        let flight: Joined<T, E> =
            async move { task.await.unwrap_or_else(|e| Err(E::from(Panicked(e.to_string())))) }
                .boxed()
                .shared();
        map.insert(key.to_string(), (id, flight.clone()));
        (flight, Role::Leader)
    }

    /// Detaches the flight of `key` (a purge happened): it still finishes
    /// for its current callers, but later callers start a new one.
    pub fn forget(&self, key: &str) {
        self.inflight.lock().remove(key);
    }

    /// Detaches every flight (events may have been missed).
    pub fn forget_all(&self) {
        self.inflight.lock().clear();
    }

    /// Number of flights under way.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.inflight.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' error type.
    #[derive(Debug, Clone)]
    enum Error {
        Internal(#[allow(dead_code)] String),
    }

    impl From<Panicked> for Error {
        fn from(p: Panicked) -> Self {
            Error::Internal(p.0)
        }
    }
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let sf = Arc::new(Singleflight::<u32, Error>::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..100 {
            let (sf, calls) = (sf.clone(), calls.clone());
            handles.push(tokio::spawn(async move {
                sf.run("k", || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(7)
                })
                .await
            }));
        }
        let mut leaders = 0;
        for h in handles {
            let (v, role) = h.await.unwrap();
            assert_eq!(v.unwrap(), 7);
            leaders += usize::from(role == Role::Leader);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert_eq!(sf.in_flight(), 0);
    }

    #[tokio::test]
    async fn errors_are_shared_and_not_remembered() {
        let sf = Singleflight::<u32, Error>::default();
        let (r, _) = sf.run("k", || async { Err(Error::Internal("boom".into())) }).await;
        assert!(r.is_err());
        let (r, role) = sf.run("k", || async { Ok(1) }).await;
        assert_eq!((r.unwrap(), role), (1, Role::Leader));
    }

    #[tokio::test]
    async fn a_panicking_fetch_fails_its_callers_once_and_is_not_joined_later() {
        let sf = Singleflight::<u32, Error>::default();
        let (r, _) = sf
            .run("k", || async {
                if sf_panics() {
                    panic!("fetch bug");
                }
                Ok(0)
            })
            .await;
        assert!(matches!(r, Err(Error::Internal(_))), "{r:?}");
        assert_eq!(sf.in_flight(), 0);
        let (r, role) = sf.run("k", || async { Ok(2) }).await;
        assert_eq!((r.unwrap(), role), (2, Role::Leader));
    }

    fn sf_panics() -> bool {
        true
    }

    #[tokio::test]
    async fn a_forgotten_flight_is_not_joined_and_does_not_remove_its_successor() {
        let sf = Arc::new(Singleflight::<u32, Error>::default());
        let old = {
            let sf = sf.clone();
            tokio::spawn(async move {
                sf.run("k", || async {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    Ok(1)
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        sf.forget("k");
        let new = {
            let sf = sf.clone();
            tokio::spawn(async move {
                sf.run("k", || async {
                    tokio::time::sleep(Duration::from_millis(120)).await;
                    Ok(2)
                })
                .await
            })
        };
        assert_eq!(old.await.unwrap().0.unwrap(), 1);
        // The old flight finished; the new one must still be joinable.
        let (v, role) = sf.run("k", || async { Ok(3) }).await;
        assert_eq!((v.unwrap(), role), (2, Role::Follower));
        assert_eq!(new.await.unwrap().0.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_cancelled_leader_does_not_cancel_the_fetch() {
        let sf = Arc::new(Singleflight::<u32, Error>::default());
        let leader = {
            let sf = sf.clone();
            tokio::spawn(async move {
                sf.run("k", || async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(5)
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        let (r, role) = sf.run("k", || async { Ok(9) }).await;
        assert_eq!((r.unwrap(), role), (5, Role::Follower));
    }
}
