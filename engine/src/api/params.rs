//! Request parameter validation. Every problem is collected and reported
//! against the parameter that has it; nothing invalid gets further (a handle
//! in particular is parsed here, before it can come near a path).

use super::{Request, Response};
use crate::handle::ShapeHandle;
use crate::offset::LogOffset;
use crate::shape::{Replica, ShapeRequest};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Params {
    pub shape: ShapeRequest,
    pub offset: LogOffset,
    /// `None` for `offset=-1` (a handle sent with it is ignored, as in Electric).
    pub handle: Option<ShapeHandle>,
    pub live: bool,
}

pub(crate) fn parse(request: &Request) -> Result<Params, Response> {
    let mut errors: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut error =
        |field: &'static str, message: String| errors.entry(field).or_default().push(message);
    let get = |name: &str| request.params.get(name).map(String::as_str);

    let table = match get("table") {
        Some(t) if !t.trim().is_empty() => t.to_string(),
        _ => {
            error("table", "can't be blank".to_string());
            String::new()
        }
    };
    let offset = match get("offset") {
        None => {
            error("offset", "can't be blank".to_string());
            None
        }
        Some(text) => text
            .parse::<LogOffset>()
            .map_err(|e| error("offset", e.to_string()))
            .ok(),
    };
    let live = match get("live") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            error("live", format!("must be true or false, not {other:?}"));
            false
        }
    };
    let replica = match get("replica") {
        None | Some("default") => Replica::Default,
        Some("full") => Replica::Full,
        Some(other) => {
            error("replica", format!("must be default or full, not {other:?}"));
            Replica::Default
        }
    };
    let columns = match get("columns").map(parse_columns) {
        None => None,
        Some(Ok(columns)) => Some(columns),
        Some(Err(why)) => {
            error("columns", why);
            None
        }
    };
    let where_clause = get("where").map(str::to_string);
    let handle = match (offset, get("handle")) {
        (Some(LogOffset::BeforeAll), _) | (None, _) => None,
        (Some(_), None) => {
            error("handle", "can't be blank when offset is not -1".to_string());
            None
        }
        (Some(_), Some(text)) => ShapeHandle::parse(text)
            .map_err(|e| error("handle", e))
            .ok(),
    };
    if live && offset == Some(LogOffset::BeforeAll) {
        error("live", "can't be true when offset is -1".to_string());
    }
    if !errors.is_empty() {
        return Err(Response::bad_request(&errors));
    }
    let shape = ShapeRequest {
        table,
        columns,
        where_clause,
        replica,
    };
    Ok(Params {
        shape,
        offset: offset.expect("checked"),
        handle,
        live,
    })
}

/// `a, "Quoted ""name""", B`: comma-separated identifiers; quoted ones keep
/// their case, unquoted ones fold to lower case (Postgres' rules).
fn parse_columns(text: &str) -> Result<Vec<String>, String> {
    let mut columns = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut name = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => name.push('"'),
                    Some('"') => break,
                    Some(c) => name.push(c),
                    None => return Err(format!("unterminated quoted column name in {text:?}")),
                }
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                name.push(c);
            }
            name = name.trim().to_lowercase();
        }
        if name.is_empty() {
            return Err(format!("empty column name in {text:?}"));
        }
        columns.push(name);
        match chars.next() {
            None => return Ok(columns),
            Some(',') => {}
            Some(c) => return Err(format!("unexpected {c:?} after a column name in {text:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_follow_identifier_rules() {
        assert_eq!(
            parse_columns("id, Value ,\"Mixed\"\"Case\"").unwrap(),
            ["id", "value", "Mixed\"Case"]
        );
        assert!(
            parse_columns("a,,b")
                .unwrap_err()
                .contains("empty column name")
        );
        assert!(
            parse_columns("\"open")
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(parse_columns("\"a\" b").unwrap_err().contains("unexpected"));
    }
}
