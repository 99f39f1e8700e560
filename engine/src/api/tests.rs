//! Parameter validation, without a stack (the full read path is exercised by
//! the simulator's stack tests).

use super::Request;
use super::params::parse;
use crate::offset::LogOffset;

fn errors(params: &[(&str, &str)]) -> serde_json::Value {
    let response = parse(&Request::new(params.iter().copied())).expect_err("must be refused");
    assert_eq!(response.status, 400);
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(body["message"], "Invalid request");
    body["errors"].clone()
}

#[test]
fn every_bad_parameter_is_reported_at_once() {
    let errors = errors(&[
        ("offset", "x_1"),
        ("live", "yes"),
        ("replica", "most"),
        ("columns", "a,,b"),
    ]);
    for field in ["table", "offset", "live", "replica", "columns"] {
        assert!(errors[field].is_array(), "{field} missing from {errors}");
    }
}

#[test]
fn a_handle_is_ignored_at_offset_minus_one_and_required_elsewhere() {
    let ok = parse(&Request::new([
        ("table", "t"),
        ("offset", "-1"),
        ("handle", "../../etc"),
    ]))
    .unwrap();
    assert_eq!((ok.offset, ok.handle), (LogOffset::BEFORE_ALL, None));
    assert!(errors(&[("table", "t"), ("offset", "0_inf")])["handle"].is_array());
    let bad = errors(&[("table", "t"), ("offset", "0_inf"), ("handle", "../../etc")]);
    assert!(
        bad["handle"][0]
            .as_str()
            .unwrap()
            .contains("invalid format")
    );
}
