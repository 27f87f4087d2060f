//! The purge paths on the embedded store: no Redis, no network.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::store::testing::TestStore;

/// Nothing held locally.
struct NoCopies;

impl LocalCopies for NoCopies {
    fn forget(&self, _store_key: &str) {}
    fn forget_all(&self) {}
}

fn invalidator(store: Arc<dyn Store>) -> Invalidator {
    Invalidator {
        env: "t".into(),
        store,
        catalog: Arc::new(Catalog::with_presets(&Default::default()).unwrap()),
        local: Arc::new(NoCopies),
        bus: Bus::local("test".into()),
        ack_timeout: Duration::from_secs(1),
        retry_for: Duration::from_secs(5),
    }
}

fn purge_of(key: &str) -> Purge {
    Purge { keys: vec![key.into()], reason: "test".into(), actor: "webhook".into(), ..Default::default() }
}

/// A webhook request cancelled (the sender hung up) while its purge runs
/// must not leave the event's mark pending for the whole dedupe window:
/// the sender's retry has to get through.
#[tokio::test]
async fn a_cancelled_purge_frees_its_event_id_for_the_retry() {
    let store = Arc::new(TestStore::default());
    store.hang_purges.store(true, Ordering::SeqCst);
    let inv = Arc::new(invalidator(store.clone()));
    let first = {
        let inv = inv.clone();
        tokio::spawn(async move {
            inv.purge_once("evt-1", purge_of("t:routing.queue:q1:full"), Duration::from_secs(3600)).await
        })
    };
    // Wait until the first attempt holds the mark, then cancel it.
    let mark = keys::event_mark("t", "evt-1");
    let held = async {
        while store.inner.get(&mark).await.unwrap().is_none() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), held).await.expect("the first attempt took the mark");
    first.abort();
    let _ = first.await;
    store.hang_purges.store(false, Ordering::SeqCst);
    let retry = async {
        loop {
            match inv
                .purge_once("evt-1", purge_of("t:routing.queue:q1:full"), Duration::from_secs(3600))
                .await
            {
                Ok(Once::Pending) => tokio::task::yield_now().await,
                other => return other,
            }
        }
    };
    let got = tokio::time::timeout(Duration::from_secs(5), retry).await.expect("the retry is not held off");
    assert!(matches!(got, Ok(Once::Purged(_))), "{got:?}");
    assert_eq!(
        inv.purge_once("evt-1", purge_of("t:routing.queue:q1:full"), Duration::from_secs(3600))
            .await
            .unwrap(),
        Once::Duplicate
    );
}

/// A purge that fails the way a Redis failover does (the store answers
/// errors for a while) is retried within the caller's deadline instead of
/// failing at once; past the deadline, the last error.
#[tokio::test(start_paused = true)]
async fn a_purge_during_a_store_failover_is_retried_within_the_deadline() {
    let store = Arc::new(TestStore::default());
    store.down.store(true, Ordering::SeqCst);
    let inv = invalidator(store.clone());
    let healer = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            store.down.store(false, Ordering::SeqCst);
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = inv.purge(purge_of("t:routing.queue:q1:full"), Some(deadline)).await;
    assert!(got.is_ok(), "failed although the store came back within the deadline: {got:?}");
    assert!(Instant::now() < deadline);
    healer.await.unwrap();

    store.down.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let deadline = started + Duration::from_millis(800);
    let got = inv.purge(purge_of("t:routing.queue:q1:full"), Some(deadline)).await;
    assert!(matches!(got, Err(Error::Store(_))), "{got:?}");
    assert!(Instant::now() <= deadline, "answered after the deadline: {:?}", started.elapsed());
}
