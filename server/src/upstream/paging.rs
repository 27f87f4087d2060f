//! Genesys paging: a list kind fetches every page (`pageNumber` /
//! `pageCount` / `nextUri`) and is stored as one assembled entry. Each page
//! is a full API call (token, budget, retries). A list over
//! `upstream.max_list_entries` is refused with a clear error rather than
//! stored truncated.

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::{Call, Fetched, Upstream};
use crate::error::{Error, Result};

/// Paging that does not end is a broken upstream.
const MAX_PAGES: u32 = 10_000;

impl Upstream {
    pub(super) async fn fetch_all_pages(&self, call: &Call, deadline: Option<Instant>) -> Result<Fetched> {
        let max = self.settings.max_list_entries;
        let mut entities: Vec<Value> = Vec::new();
        let mut page = 1u32;
        loop {
            let mut paged = call.clone();
            if !paged.query.iter().any(|(k, _)| k == "pageSize") {
                paged.query.push(("pageSize".into(), self.settings.page_size.to_string()));
            }
            paged.query.push(("pageNumber".into(), page.to_string()));
            let fetched = self.call(&paged, deadline).await?;
            let mut doc: Map<String, Value> = serde_json::from_slice(&fetched.body)
                .map_err(|e| Error::BadUpstream(format!("page {page} is not a JSON object: {e}")))?;
            let total = doc.get("total").and_then(Value::as_u64).unwrap_or(0) as usize;
            if total > max {
                return Err(Error::BadUpstream(format!(
                    "{}: list has {total} entries, over the limit of {max} (upstream.max_list_entries); \
                     narrow it with query parameters or raise the limit",
                    call.path
                )));
            }
            match doc.remove("entities") {
                Some(Value::Array(items)) => entities.extend(items),
                _ => return Err(Error::BadUpstream(format!("page {page} has no entities array"))),
            }
            if entities.len() > max {
                return Err(Error::BadUpstream(format!(
                    "{}: list has more than {max} entries (upstream.max_list_entries)",
                    call.path
                )));
            }
            let page_count = doc.get("pageCount").and_then(Value::as_u64).unwrap_or(1) as u32;
            let has_next = doc.get("nextUri").is_some_and(|v| !v.is_null());
            if page >= page_count && !has_next {
                break;
            }
            page += 1;
            if page > MAX_PAGES {
                return Err(Error::BadUpstream(format!("paging did not end after {MAX_PAGES} pages")));
            }
        }
        let total = entities.len();
        let body = serde_json::to_vec(&serde_json::json!({ "entities": entities, "total": total }))
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Fetched { body: Bytes::from(body), etag: None, last_modified: None, not_modified: false })
    }
}
