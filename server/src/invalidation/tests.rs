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

/// A purge of an entity's own tag (`queue:{id}`) finds the entity's keys
/// from the catalog (every variant), not from an index the fetches kept:
/// an entry is found whether or not anything indexed it.
#[tokio::test]
async fn an_entity_tag_purge_names_every_variant_of_the_entity() {
    let store = Arc::new(crate::store::MemoryStore::new());
    for key in ["t:routing.queue:q1:full", "t:routing.queue:q1:summary", "t:routing.queue:q2:full"] {
        store.set(&keys::store_key(key), Bytes::from_static(b"{}"), Duration::from_secs(60)).await.unwrap();
    }
    let inv = invalidator(store.clone());
    let tags = Purge { tags: vec!["queue:q1".into()], reason: "test".into(), ..Default::default() };
    assert_eq!(inv.purge(tags, None).await.unwrap(), 2);
    for (key, left) in [
        ("t:routing.queue:q1:full", false),
        ("t:routing.queue:q1:summary", false),
        ("t:routing.queue:q2:full", true),
    ] {
        assert_eq!(store.get(&keys::store_key(key)).await.unwrap().is_some(), left, "{key}");
    }
}
