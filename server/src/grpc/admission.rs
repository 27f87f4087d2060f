//! The gRPC edge's gate: who is calling ([`Authenticate`], a tonic
//! interceptor putting a [`Caller`] in each request's extensions) and how
//! many Watch streams each caller holds ([`WatchSlots`]).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::{Request, Status};

use crate::auth::{self, Auth, Caller};
use crate::error::Error;
use crate::tls::PeerInfo;

/// Authenticates every call of the service it wraps: the bearer of
/// `authorization: Bearer …` (or `x-api-key`), else the client
/// certificate's SANs. Refused: UNAUTHENTICATED, before any handler runs.
#[derive(Clone)]
pub struct Authenticate {
    pub auth: Auth,
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // Credentials are borrowed from the request (no copy per call), and
        // the borrow ends before the caller is put in its extensions. With no
        // callers configured (the loopback default) every call is anonymous.
        let authenticated = {
            let md = request.metadata();
            let bearer = md
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(auth::bearer)
                .or_else(|| md.get("x-api-key").and_then(|v| v.to_str().ok()));
            let sans = request.extensions().get::<PeerInfo>().map_or(&[][..], |p| p.sans.as_slice());
            self.auth.load().authenticate(bearer, sans)
        };
        match authenticated {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Ok(request)
            }
            Err(e) => {
                crate::metrics::refused("unauthenticated");
                Err(e.into())
            }
        }
    }
}

/// The caller [`Authenticate`] put on the request.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Error::Internal("request reached a handler unauthenticated".into()).into())
}

/// A scope check's refusal, counted.
pub fn refused(e: Error) -> Status {
    crate::metrics::refused("permission_denied");
    e.into()
}

/// Invalidate / Watch lists within `limits.max_list_entries` entries of at
/// most `limits.max_string_bytes` each: INVALID_ARGUMENT naming the field.
pub fn check_sizes(lists: &[(&str, &[String])], max_entries: usize, max_bytes: usize) -> Result<(), Error> {
    let total: usize = lists.iter().map(|(_, l)| l.len()).sum();
    if total > max_entries {
        return Err(Error::invalid(
            lists.iter().map(|(f, _)| *f).collect::<Vec<_>>().join("+"),
            format!("{total} entries is over limits.max_list_entries ({max_entries})"),
        ));
    }
    for (field, list) in lists {
        if let Some(s) = list.iter().find(|s| s.len() > max_bytes) {
            return Err(Error::invalid(
                *field,
                format!("an entry of {} bytes is over limits.max_string_bytes ({max_bytes})", s.len()),
            ));
        }
    }
    Ok(())
}

/// Open Watch streams, in total and per caller.
pub struct WatchSlots {
    max_total: usize,
    max_per_caller: usize,
    open: Mutex<(usize, HashMap<String, usize>)>,
}

/// One open Watch stream; dropping it (the stream ends) frees the slot.
pub struct WatchSlot {
    slots: Arc<WatchSlots>,
    caller: String,
}

impl WatchSlots {
    pub fn new(max_total: usize, max_per_caller: usize) -> Arc<WatchSlots> {
        Arc::new(WatchSlots { max_total, max_per_caller, open: Mutex::new((0, HashMap::new())) })
    }

    /// A slot for `caller`, or RESOURCE_EXHAUSTED naming the limit.
    pub fn acquire(self: &Arc<Self>, caller: &str) -> Result<WatchSlot, Error> {
        let mut open = self.open.lock();
        if open.0 >= self.max_total {
            crate::metrics::refused("watch_limit");
            return Err(Error::LimitReached(format!(
                "{} Watch streams open on this instance (limits.max_watch_streams)",
                self.max_total
            )));
        }
        let mine = open.1.entry(caller.to_string()).or_default();
        if *mine >= self.max_per_caller {
            crate::metrics::refused("watch_limit");
            return Err(Error::LimitReached(format!(
                "caller {caller} has {} Watch streams open (limits.max_watch_streams_per_caller)",
                self.max_per_caller
            )));
        }
        *mine += 1;
        open.0 += 1;
        Ok(WatchSlot { slots: self.clone(), caller: caller.to_string() })
    }

    pub fn open(&self) -> usize {
        self.open.lock().0
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock();
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_lists_and_strings_are_refused_naming_the_field() {
        let keys = vec!["a".to_string(); 3];
        let tags = vec!["x".repeat(20)];
        check_sizes(&[("keys", &keys), ("tags", &tags)], 4, 20).unwrap();
        let e = check_sizes(&[("keys", &keys), ("tags", &tags)], 3, 20).unwrap_err();
        assert_eq!(e.violations()[0].field, "keys+tags");
        let e = check_sizes(&[("keys", &keys), ("tags", &tags)], 4, 19).unwrap_err();
        assert_eq!(e.violations()[0].field, "tags");
    }

    #[test]
    fn watch_slots_stop_at_the_caller_and_total_limits_and_free_on_drop() {
        let slots = WatchSlots::new(3, 2);
        let a1 = slots.acquire("a").unwrap();
        let _a2 = slots.acquire("a").unwrap();
        let e = slots.acquire("a").err().unwrap();
        assert!(e.to_string().contains("max_watch_streams_per_caller"), "{e}");
        let _b1 = slots.acquire("b").unwrap();
        let e = slots.acquire("c").err().unwrap();
        assert!(e.to_string().contains("limits.max_watch_streams"), "{e}");
        drop(a1);
        assert_eq!(slots.open(), 2);
        slots.acquire("a").unwrap();
    }
}
