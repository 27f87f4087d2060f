//! Genesys page-number paging: query parsing and the list envelope
//! (`entities`, `pageSize`, `pageNumber`, `total`, `pageCount`, `*Uri`).

use std::ops::Range;

use serde_json::{json, Map, Value};
use url::form_urlencoded;

use crate::error::ApiError;

const DEFAULT_PAGE_SIZE: usize = 25;
const MAX_PAGE_SIZE: usize = 500;

/// Parsed list query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageQuery {
    pub page_size: usize,
    pub page_number: usize,
    /// Case-insensitive name prefix filter.
    pub name: Option<String>,
}

fn parse_positive(key: &str, value: &str, max: usize) -> Result<usize, ApiError> {
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "Invalid value for {key}: '{value}' (expected an integer from 1 to {max})"
        ))),
    }
}

impl PageQuery {
    /// Parses `pageSize`, `pageNumber` and `name`; other parameters are ignored.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut q = PageQuery { page_size: DEFAULT_PAGE_SIZE, page_number: 1, name: None };
        for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "pageSize" => q.page_size = parse_positive("pageSize", &value, MAX_PAGE_SIZE)?,
                "pageNumber" => q.page_number = parse_positive("pageNumber", &value, u32::MAX as usize)?,
                "name" if !value.is_empty() => q.name = Some(value.into_owned()),
                _ => {}
            }
        }
        Ok(q)
    }
}

/// One page of a list of `total` items under `base_path`.
#[derive(Debug, Clone)]
pub(crate) struct Page<'a> {
    base_path: &'a str,
    query: &'a PageQuery,
    total: usize,
    page_count: usize,
}

impl<'a> Page<'a> {
    pub fn new(base_path: &'a str, query: &'a PageQuery, total: usize) -> Self {
        Self { base_path, query, total, page_count: total.div_ceil(query.page_size) }
    }

    /// Indices of the items on this page (empty past the last page).
    pub fn range(&self) -> Range<usize> {
        let start = (self.query.page_number - 1).saturating_mul(self.query.page_size).min(self.total);
        let end = start.saturating_add(self.query.page_size).min(self.total);
        start..end
    }

    fn uri(&self, page_number: usize) -> String {
        let mut uri =
            format!("{}?pageSize={}&pageNumber={}", self.base_path, self.query.page_size, page_number);
        if let Some(name) = &self.query.name {
            uri.push_str("&name=");
            uri.extend(form_urlencoded::byte_serialize(name.as_bytes()));
        }
        uri
    }

    /// The list envelope around `entities`.
    pub fn envelope(&self, entities: Vec<Value>) -> Value {
        let n = self.query.page_number;
        let last = self.page_count.max(1);
        let mut body = Map::new();
        body.insert("entities".into(), Value::Array(entities));
        body.insert("pageSize".into(), json!(self.query.page_size));
        body.insert("pageNumber".into(), json!(n));
        body.insert("total".into(), json!(self.total));
        body.insert("pageCount".into(), json!(self.page_count));
        body.insert("firstUri".into(), json!(self.uri(1)));
        body.insert("selfUri".into(), json!(self.uri(n)));
        body.insert("lastUri".into(), json!(self.uri(last)));
        if n > 1 {
            body.insert("previousUri".into(), json!(self.uri((n - 1).min(last))));
        }
        if n < self.page_count {
            body.insert("nextUri".into(), json!(self.uri(n + 1)));
        }
        Value::Object(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let q = PageQuery::parse(None).unwrap();
        assert_eq!((q.page_size, q.page_number, q.name), (25, 1, None));
        let q = PageQuery::parse(Some("pageSize=500&pageNumber=3&name=Queue%2000")).unwrap();
        assert_eq!((q.page_size, q.page_number), (500, 3));
        assert_eq!(q.name.as_deref(), Some("Queue 00"));
        for bad in ["pageSize=501", "pageSize=0", "pageSize=x", "pageNumber=0", "pageNumber=-1"] {
            assert!(PageQuery::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn envelope_links() {
        let q = PageQuery::parse(Some("pageSize=50&pageNumber=2")).unwrap();
        let page = Page::new("/x", &q, 120);
        assert_eq!(page.range(), 50..100);
        let body = page.envelope(vec![]);
        assert_eq!(body["pageCount"], 3);
        assert_eq!(body["nextUri"], "/x?pageSize=50&pageNumber=3");
        assert_eq!(body["previousUri"], "/x?pageSize=50&pageNumber=1");
        assert_eq!(body["lastUri"], "/x?pageSize=50&pageNumber=3");
        let q = PageQuery::parse(Some("pageSize=50&pageNumber=3")).unwrap();
        let page = Page::new("/x", &q, 120);
        assert_eq!(page.range(), 100..120);
        assert!(page.envelope(vec![]).get("nextUri").is_none());
        let q = PageQuery::parse(Some("pageNumber=9")).unwrap();
        assert!(Page::new("/x", &q, 10).range().is_empty());
    }
}
