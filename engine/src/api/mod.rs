//! The client API: plain request and response types (the transport is the
//! host's business) with Electric's `GET /v1/shape` semantics. A request is a
//! map of query parameters; a response is a status, headers and a JSON body.
//!
//! Status codes: 200 data; 202 a shape removed on request; 400 invalid
//! request (the body names each bad parameter); 404 no such shape to
//! remove; 409 the handle is unknown or no longer matches the shape (the
//! `electric-handle` header carries the current one, the body is
//! `must-refetch`); 503 the stack is not ready (or the snapshot is late).

mod params;
mod serve;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub params: BTreeMap<String, String>,
}

impl Request {
    pub fn new<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Request {
        Request {
            params: params
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Response {
    pub status: u16,
    /// Header names are the engine's constants (borrowed, not copied).
    pub headers: BTreeMap<Cow<'static, str>, String>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn json(status: u16, body: String) -> Response {
        let headers = BTreeMap::from([("content-type".into(), "application/json".to_string())]);
        Response {
            status,
            headers,
            body,
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.insert(Cow::Borrowed(name), value.into());
        self
    }

    /// 400 with `{"message": "Invalid request", "errors": {param: [messages]}}`.
    pub(crate) fn bad_request(errors: &BTreeMap<&'static str, Vec<String>>) -> Response {
        let body = serde_json::json!({"message": "Invalid request", "errors": errors});
        Response::json(400, body.to_string()).with("cache-control", "no-store")
    }

    pub(crate) fn unavailable(message: &str, retry_after_s: u64) -> Response {
        let body = serde_json::json!({"message": message});
        Response::json(503, body.to_string())
            .with("retry-after", retry_after_s.to_string())
            .with("cache-control", "no-store")
    }

    pub(crate) fn accepted() -> Response {
        Response::json(202, "{}".to_string()).with("cache-control", "no-store")
    }

    pub(crate) fn not_found(message: &str) -> Response {
        let body = serde_json::json!({"message": message});
        Response::json(404, body.to_string()).with("cache-control", "no-store")
    }

    pub(crate) fn must_refetch(handle: &str) -> Response {
        let body = crate::wire::array([crate::wire::must_refetch().as_str()]);
        Response::json(409, body)
            .with("electric-handle", handle)
            .with("cache-control", "public, max-age=60, must-revalidate")
    }
}
