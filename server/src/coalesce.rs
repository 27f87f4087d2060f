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

use crate::error::Error;

type Flight<T> = Shared<BoxFuture<'static, Result<T, Error>>>;

/// Flight ids, so a finished flight removes only itself from the map (a
/// purge may have detached it and a newer flight taken its place).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Flights under way by key, each with its id.
type FlightMap<T> = HashMap<String, (u64, Flight<T>)>;

pub struct Singleflight<T: Clone + Send + Sync + 'static> {
    inflight: Arc<Mutex<FlightMap<T>>>,
}

impl<T: Clone + Send + Sync + 'static> Clone for Singleflight<T> {
    /// Another handle on the same set of flights.
    fn clone(&self) -> Self {
        Singleflight { inflight: self.inflight.clone() }
    }
}

impl<T: Clone + Send + Sync + 'static> Default for Singleflight<T> {
    fn default() -> Self {
        Singleflight { inflight: Arc::default() }
    }
}

/// Whether the caller started the flight or joined one already under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

/// Takes a finished (or panicked) flight out of the map, unless a purge
/// detached it and a newer flight took its place.
struct Done<T: Clone + Send + Sync + 'static> {
    inflight: Arc<Mutex<FlightMap<T>>>,
    key: String,
    id: u64,
}

impl<T: Clone + Send + Sync + 'static> Drop for Done<T> {
    fn drop(&mut self) {
        let mut map = self.inflight.lock();
        if map.get(&self.key).is_some_and(|(i, _)| *i == self.id) {
            map.remove(&self.key);
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Singleflight<T> {
    /// Runs `make()` for `key` unless a flight for `key` is under way, in
    /// which case its result is awaited instead.
    pub async fn run<F, M>(&self, key: &str, make: M) -> (Result<T, Error>, Role)
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let (flight, role) = {
            let mut map = self.inflight.lock();
            match map.get(key) {
                Some((_, f)) => (f.clone(), Role::Follower),
                None => {
                    let inflight = self.inflight.clone();
                    let owned_key = key.to_string();
                    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                    let fut = make();
                    // In the leader's span, so the fetch traces under its request.
                    let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
                        // Removed on drop: even a fetch that panics leaves no
                        // dead flight for later callers to join.
                        let _done = Done { inflight, key: owned_key, id };
                        fut.await
                    }));
                    let flight: Flight<T> = async move {
                        task.await.unwrap_or_else(|e| Err(Error::Internal(format!("fetch task failed: {e}"))))
                    }
                    .boxed()
                    .shared();
                    map.insert(key.to_string(), (id, flight.clone()));
                    (flight, Role::Leader)
                }
            }
        };
        let _waiting = (role == Role::Follower).then(crate::metrics::coalesced_waiter);
        (flight.await, role)
    }

    /// Detaches the flight of `key`, if any: callers arriving from now on
    /// start a new one. Used when a purge makes the running fetch's result
    /// unfit for anyone who asks after the purge.
    pub fn forget(&self, key: &str) {
        self.inflight.lock().remove(key);
    }

    /// Flights under way (for metrics and tests).
    pub fn in_flight(&self) -> usize {
        self.inflight.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let sf = Arc::new(Singleflight::<u32>::default());
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
        let sf = Singleflight::<u32>::default();
        let (r, _) = sf.run("k", || async { Err(Error::Internal("boom".into())) }).await;
        assert!(r.is_err());
        let (r, role) = sf.run("k", || async { Ok(1) }).await;
        assert_eq!((r.unwrap(), role), (1, Role::Leader));
    }

    #[tokio::test]
    async fn a_panicking_fetch_fails_its_callers_once_and_is_not_joined_later() {
        let sf = Singleflight::<u32>::default();
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
        let sf = Arc::new(Singleflight::<u32>::default());
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
        let sf = Arc::new(Singleflight::<u32>::default());
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
