//! The client's own checks, each against a crafted response.

use super::*;

fn response(handle: &str, offset: &str, body: &str) -> Response {
    let headers = [("electric-handle", handle), ("electric-offset", offset)]
        .into_iter()
        .map(|(k, v)| (k.into(), v.to_string()))
        .collect();
    Response {
        status: 200,
        headers,
        body: body.to_string(),
    }
}

/// The key of [`ROW`].
const KEY: &str = r#""public"."t"/"a""#;
const ROW: &str = r#"{"key":"\"public\".\"t\"/\"a\"","value":{"id":"a","n":"1"},"headers":{"operation":"insert","relation":["public","t"]}}"#;

/// A client that has read the snapshot row `a` (n = 1) of handle `h`.
fn started(replica_full: bool) -> ShapeClient {
    let mut client = ShapeClient::new("t", None, replica_full);
    let request = client.request();
    client
        .apply(&request, &response("h", "0_inf", &format!("[{ROW}]")))
        .unwrap();
    client
}

fn change(op: &str, value: &str, old_value: &str, last: bool) -> String {
    let old = if old_value.is_empty() {
        String::new()
    } else {
        format!(r#","old_value":{old_value}"#)
    };
    format!(
        r#"{{"key":"\"public\".\"t\"/\"a\"","value":{value}{old},"headers":{{"operation":"{op}","relation":["public","t"],"lsn":"9","op_position":0,"txids":[7],"last":{last}}}}}"#
    )
}

#[test]
fn a_200_under_another_handle_or_going_back_breaks_continuity() {
    let mut client = started(false);
    let request = client.request();
    let err = client
        .apply(&request, &response("other", "0_inf", "[]"))
        .unwrap_err();
    assert_eq!(err.class, "continuity", "{err}");
    let mut client = started(false);
    let request = client.request();
    let err = client
        .apply(&request, &response("h", "0_0", "[]"))
        .unwrap_err();
    assert_eq!(err.class, "continuity", "{err}");
    assert!(err.message.contains("went back"), "{err}");
}

#[test]
fn replica_full_updates_must_carry_the_values_the_client_had() {
    let good = change("update", r#"{"id":"a","n":"2"}"#, r#"{"n":"1"}"#, true);
    let mut client = started(true);
    assert_eq!(
        client.rows[KEY]["n"].as_deref(),
        Some("1"),
        "the client had 1"
    );
    let request = client.request();
    client
        .apply(&request, &response("h", "9_0", &format!("[{good}]")))
        .unwrap();
    assert_eq!(client.rows[KEY]["n"].as_deref(), Some("2"));
    let wrong = change("update", r#"{"id":"a","n":"2"}"#, r#"{"n":"2"}"#, true);
    let mut client = started(true);
    let request = client.request();
    let err = client
        .apply(&request, &response("h", "9_0", &format!("[{wrong}]")))
        .unwrap_err();
    assert_eq!(err.class, "wire", "{err}");
    let partial = change("update", r#"{"n":"2"}"#, r#"{"n":"1"}"#, true);
    let mut client = started(true);
    let request = client.request();
    let err = client
        .apply(&request, &response("h", "9_0", &format!("[{partial}]")))
        .unwrap_err();
    assert!(err.message.contains("columns"), "the whole row: {err}");
}

#[test]
fn a_transaction_must_end_with_last_before_another_or_an_up_to_date() {
    let open = change("update", r#"{"id":"a","n":"2"}"#, "", false);
    let up_to_date = r#"{"headers":{"control":"up-to-date","global_last_seen_lsn":"9"}}"#;
    let mut client = started(false);
    let request = client.request();
    let err = client
        .apply(
            &request,
            &response("h", "9_0", &format!("[{open},{up_to_date}]")),
        )
        .unwrap_err();
    assert_eq!(err.class, "wire", "{err}");
    let closed = change("update", r#"{"id":"a","n":"2"}"#, "", true);
    let mut client = started(false);
    let request = client.request();
    let applied = client
        .apply(
            &request,
            &response("h", "9_0", &format!("[{closed},{up_to_date}]")),
        )
        .unwrap();
    assert_eq!(
        (applied.up_to_date, client.up_to_date_lsn),
        (Some(9), Some(9))
    );
}

#[test]
fn strict_materialization_and_malformed_messages_are_named() {
    let mut client = started(false);
    let request = client.request();
    let err = client
        .apply(&request, &response("h", "0_inf", &format!("[{ROW}]")))
        .unwrap_err();
    assert_eq!(err.class, "strict-materialization", "{err}");
    let mut client = started(false);
    let request = client.request();
    let number = r#"[{"key":"k","value":{"n":1},"headers":{"operation":"insert","relation":["public","t"]}}]"#;
    let err = client
        .apply(&request, &response("h", "0_inf", number))
        .unwrap_err();
    assert_eq!(err.class, "wire", "values are text: {err}");
}

/// A tagged snapshot row of a subquery shape with two disjuncts: position
/// 0 (a subquery) alone, or position 1 (a plain atom) alone.
fn tagged(
    id: &str,
    op: &str,
    tags: &[&str],
    removed: Option<&[&str]>,
    active: [bool; 2],
) -> String {
    let list = |l: &[&str]| {
        let quoted: Vec<String> = l.iter().map(|t| format!("{t:?}")).collect();
        format!("[{}]", quoted.join(","))
    };
    let removed = removed.map_or(String::new(), |r| format!(r#","removed_tags":{}"#, list(r)));
    format!(
        r#"{{"key":"\"public\".\"t\"/\"{id}\"","value":{{"id":"{id}"}},"headers":{{"operation":"{op}","relation":["public","t"],"tags":{}{removed},"active_conditions":[{},{}]}}}}"#,
        list(tags),
        active[0],
        active[1]
    )
}

fn event(kind: &str, hash: &str) -> String {
    event_at(kind, 0, hash)
}

fn event_at(kind: &str, pos: usize, hash: &str) -> String {
    format!(
        r#"{{"headers":{{"event":"{kind}","patterns":[{{"pos":{pos},"value":"{hash}"}}],"txids":[7]}}}}"#
    )
}

/// Applies one response body at the next offset; the result.
fn step(client: &mut ShapeClient, offset: &str, body: &[String]) -> Result<Applied, Violation> {
    let request = client.request();
    client.apply(
        &request,
        &response("h", offset, &format!("[{}]", body.join(","))),
    )
}

#[test]
fn move_out_deletes_the_rows_it_leaves_with_no_true_disjunct_and_move_in_restores_positions() {
    let mut client = ShapeClient::new("t", None, false);
    let snapshot = [
        tagged("a", "insert", &["h1/", "/1"], None, [true, false]),
        tagged("b", "insert", &["h1/", "/1"], None, [true, true]),
        tagged("c", "insert", &["h2/", "/1"], None, [true, false]),
    ];
    step(&mut client, "0_0", &snapshot).unwrap();
    // a has no other true disjunct: deleted by the client; b keeps its
    // plain one; c has another hash.
    let applied = step(&mut client, "10_0", &[event("move-out", "h1")]).unwrap();
    let deleted: Vec<&str> = applied
        .synthetic_deletes
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(deleted, vec!["\"public\".\"t\"/\"a\""]);
    assert_eq!(client.rows.len(), 2);
    assert_eq!(client.synthetic_deletes, 1);
    // A move-in sets b's position back; a later move-out of h1 and a
    // change of b's plain atom (it stays by position 0) keep it.
    step(&mut client, "11_0", &[event("move-in", "h1")]).unwrap();
    step(&mut client, "12_0", &[event("move-out", "h2")]).unwrap();
    assert_eq!(client.rows.len(), 1, "c leaves with h2");
    // An update replacing b's h1 tag: a move-out of h1 no longer matches it.
    let update = tagged("b", "update", &["h3/", "/1"], Some(&["h1/"]), [true, false]);
    step(&mut client, "13_0", &[update]).unwrap();
    let applied = step(&mut client, "14_0", &[event("move-out", "h1")]).unwrap();
    assert!(applied.synthetic_deletes.is_empty());
    let applied = step(&mut client, "15_0", &[event("move-out", "h3")]).unwrap();
    assert_eq!(applied.synthetic_deletes.len(), 1);
    assert!(client.rows.is_empty());
}

#[test]
fn malformed_tags_and_events_are_wire_violations() {
    let cases = [
        // A tag with the wrong number of slots.
        tagged("a", "insert", &["h1/", "/1/"], None, [true, false]),
        // Tags without active conditions.
        r#"{"key":"k","value":{"id":"k"},"headers":{"operation":"insert","relation":["public","t"],"tags":["h1/"]}}"#.to_string(),
        // An unknown event, and one without patterns.
        r#"{"headers":{"event":"move-sideways","patterns":[]}}"#.to_string(),
        r#"{"headers":{"event":"move-out"}}"#.to_string(),
    ];
    // A pattern past the shape's positions.
    let mut client = ShapeClient::new("t", None, false);
    step(
        &mut client,
        "0_0",
        &[tagged("a", "insert", &["h1/", "/1"], None, [true, true])],
    )
    .unwrap();
    let err = step(&mut client, "1_0", &[event_at("move-out", 2, "h1")]).unwrap_err();
    assert_eq!(err.class, "wire", "{err}");
    for body in cases {
        let mut client = ShapeClient::new("t", None, false);
        let err = step(&mut client, "0_0", std::slice::from_ref(&body)).unwrap_err();
        assert_eq!(err.class, "wire", "{body}: {err}");
    }
}

#[test]
fn a_move_in_sets_the_matched_positions_back() {
    // f is in by either of two subquery positions, one per disjunct.
    let mut client = ShapeClient::new("t", None, false);
    let f = tagged("f", "insert", &["h1/", "/h5"], None, [true, true]);
    step(&mut client, "0_0", &[f]).unwrap();
    step(&mut client, "10_0", &[event_at("move-out", 0, "h1")]).unwrap();
    assert_eq!(client.rows.len(), 1, "still in by its second disjunct");
    step(&mut client, "11_0", &[event_at("move-in", 0, "h1")]).unwrap();
    // Only because the move-in set position 0 back does f survive this.
    let applied = step(&mut client, "12_0", &[event_at("move-out", 1, "h5")]).unwrap();
    assert!(applied.synthetic_deletes.is_empty());
    assert_eq!(client.rows.len(), 1);
    let applied = step(&mut client, "13_0", &[event_at("move-out", 0, "h1")]).unwrap();
    assert_eq!(applied.synthetic_deletes.len(), 1);
}
