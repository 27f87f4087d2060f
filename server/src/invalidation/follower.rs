//! Keeps this instance in step with the bus: forgets the local copies
//! (L1, running fetches) of what others purge or update, forgets all of
//! them on a gap, and acknowledges purges that wait for it.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use crate::bus::{Bus, BusMessage};
use crate::keys;
use crate::tiers::LocalCopies;

/// Follows `bus` until it closes.
pub fn spawn(local: Arc<dyn LocalCopies>, bus: Arc<Bus>) -> tokio::task::JoinHandle<()> {
    let mut rx = bus.subscribe();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(BusMessage::Event(event)) => {
                    for key in &event.keys {
                        local.forget(&keys::store_key(key));
                    }
                    // Forgotten: acknowledge without holding up the next
                    // event (a purge waits for every instance's ack, and a
                    // follower that queued them behind one another's round
                    // trips fell seconds behind under load).
                    if event.ack.is_some() {
                        let bus = bus.clone();
                        tokio::spawn(async move { bus.acknowledge(&event).await });
                    }
                }
                Ok(BusMessage::Gap) | Err(RecvError::Lagged(_)) => local.forget_all(),
                Err(RecvError::Closed) => return,
            }
        }
    })
}
