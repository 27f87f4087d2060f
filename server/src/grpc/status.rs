//! Domain errors become gRPC statuses here, and only here: the code comes
//! from [`Error::classify`]; field violations travel as
//! `google.rpc.BadRequest` and retry hints as `google.rpc.RetryInfo`.

use std::collections::HashMap;

use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let code = tonic::Code::from_i32(err.code() as i32);
        let message = err.to_string();
        let mut details = ErrorDetails::new();
        // Whether any detail was added: a status without details carries none.
        let mut detailed = false;
        for v in err.violations() {
            details.add_bad_request_violation(v.field.clone(), v.description.clone());
            detailed = true;
        }
        if let Some(after) = err.retry_after() {
            details.set_retry_info(Some(after));
            detailed = true;
        }
        if let Error::Rejected(r) = &err {
            let reason = if r.code.is_empty() { format!("HTTP_{}", r.status) } else { r.code.clone() };
            let metadata: HashMap<String, String> =
                [("status".to_string(), r.status.to_string()), ("message".into(), r.message.clone())].into();
            details.set_error_info(reason, "cxcache.upstream", metadata);
            detailed = true;
        }
        if detailed {
            Status::with_error_details(code, message, details)
        } else {
            Status::new(code, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn codes_and_details_follow_the_domain_table() {
        let s = Status::from(Error::invalid("kind", "unknown"));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        let bad = s.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad.field_violations[0].field, "kind");

        let s = Status::from(Error::RateLimited { retry_after: Duration::from_secs(7) });
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.get_details_retry_info().and_then(|r| r.retry_delay), Some(Duration::from_secs(7)));

        assert_eq!(Status::from(Error::Store("down".into())).code(), tonic::Code::Unavailable);
        assert_eq!(Status::from(Error::BadUpstream("400".into())).code(), tonic::Code::FailedPrecondition);
        assert_eq!(Status::from(Error::Unauthenticated("401".into())).code(), tonic::Code::Unauthenticated);
        assert_eq!(
            Status::from(Error::DeadlineExceeded("late".into())).code(),
            tonic::Code::DeadlineExceeded
        );

        let rejected = Error::Rejected(crate::error::Rejection {
            path: "/api/v2/analytics/conversations/aggregates/query".into(),
            status: 400,
            code: "bad.request".into(),
            message: "interval is required".into(),
        });
        let s = Status::from(rejected);
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert!(s.message().contains("interval is required"), "{}", s.message());
        let info = s.get_details_error_info().expect("ErrorInfo");
        assert_eq!((info.reason.as_str(), info.domain.as_str()), ("bad.request", "cxcache.upstream"));
        assert_eq!(info.metadata["status"], "400");
        assert_eq!(info.metadata["message"], "interval is required");
    }
}
