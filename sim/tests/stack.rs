//! The whole stack in one process under madsim: the in-memory storage, SQLite
//! in memory, and the Postgres model as replication source. Clients follow
//! offsets like Electric's client and are checked against the oracle after
//! every step, across graceful restarts and brutal kills.
#![cfg(madsim)]

use engine::api::{Request, Response};
use engine::env::events::RemovalReason;
use engine::env::{Event, MemStorage, NoCrashPoints, RecordedEvents, Storage};
use engine::schema::{Catalog, Column, ColumnType, Row, TableName, TableSchema, Value};
use engine::stack::{Stack, StackConfig, Status};
use madsim::runtime::{Handle, NodeHandle, Runtime};
use sim::client::{Outcome, ShapeClient};
use sim::host::{Durable, now_ms, sqlite_in_memory};
use sim::oracle::rows::{self, KeyedRows};
use sim::pg::{Mutation, PgModel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn items() -> TableName {
    TableName::public("items")
}

fn catalog() -> Catalog {
    let col = |name: &str, ty, not_null| Column {
        name: name.into(),
        ty,
        not_null,
    };
    Catalog::new([TableSchema::new(
        items(),
        16_400,
        vec![
            col("id", ColumnType::Text, true),
            col("n", ColumnType::Int, true),
            col("note", ColumnType::Text, false),
        ],
        &["id"],
    )])
}

fn row(id: u32, n: i64, note: Option<&str>) -> Row {
    vec![
        Value::Text(format!("i{id:03}")),
        Value::Int(n),
        note.map_or(Value::Null, |s| Value::Text(s.into())),
    ]
}

fn config() -> StackConfig {
    let mut config = StackConfig {
        long_poll_timeout_ms: 2_000,
        ..StackConfig::default()
    };
    config.log.chunk_bytes = 300; // many chunks per shape
    config
}

struct World {
    durable: Durable,
    node_id: madsim::task::NodeId,
    stack: Arc<Mutex<Option<Stack>>>,
    /// Every event of every run of the engine.
    events: RecordedEvents,
}

impl World {
    fn new(config: StackConfig) -> World {
        let pg = PgModel::new(catalog());
        pg.load(
            &items(),
            (0..30)
                .map(|i| row(i, i64::from(i), (i % 3 == 0).then_some("alpha")))
                .collect(),
        );
        let durable = Durable {
            storage: MemStorage::new(),
            sqlite: sqlite_in_memory(),
            pg,
        };
        let stack: Arc<Mutex<Option<Stack>>> = Arc::new(Mutex::new(None));
        let events = RecordedEvents::default();
        let (d, s, e) = (durable.clone(), stack.clone(), events.clone());
        let node = Handle::current()
            .create_node()
            .name("engine")
            .init(move || {
                let (d, s, e) = (d.clone(), s.clone(), e.clone());
                async move {
                    let host = d.host(Arc::new(NoCrashPoints), Arc::new(e));
                    *s.lock().unwrap() = Some(Stack::start(host, config));
                    futures::future::pending::<()>().await;
                }
            })
            .build();
        World {
            durable,
            node_id: node.id(),
            stack,
            events,
        }
    }

    /// The engine's node as it is now (a restart replaces its task spawner).
    fn node(&self) -> NodeHandle {
        Handle::current()
            .get_node(self.node_id)
            .expect("the engine node exists")
    }

    fn stack(&self) -> Stack {
        self.stack
            .lock()
            .unwrap()
            .clone()
            .expect("the node has started")
    }

    /// Runs a request on the engine's node, as a request handler would.
    async fn serve(&self, request: Request) -> Response {
        let stack = self.stack();
        self.node()
            .spawn(async move { stack.serve(&request).await })
            .await
            .expect("request task")
    }

    async fn until_ready(&self) {
        for _ in 0..1_000 {
            if self
                .stack
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|s| s.status() == Status::Ready)
            {
                return;
            }
            madsim::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the stack never became ready");
    }

    async fn graceful_restart(&self) {
        let stack = self.stack();
        assert!(
            self.node()
                .spawn(async move { stack.shutdown().await })
                .await
                .unwrap(),
            "the drain must be clean"
        );
        let pg = &self.durable.pg;
        assert_eq!(
            pg.slot_confirmed(),
            pg.last_lsn(),
            "the drain flushed and acknowledged everything"
        );
        self.kill_and_restart().await;
        assert_eq!(self.stack().previous_stop_clean(), Some(true));
    }

    async fn kill_and_restart(&self) {
        let handle = Handle::current();
        handle.kill(self.node_id);
        self.durable.pg.release_slot(); // its connection closed with the process
        *self.stack.lock().unwrap() = None;
        madsim::time::sleep(Duration::from_millis(5)).await;
        handle.restart(self.node_id);
        madsim::time::sleep(Duration::from_millis(1)).await;
        self.until_ready().await;
    }

    /// What a client of `(where, columns)` must hold: the oracle's rows,
    /// projected, as text, by key.
    fn oracle(&self, client: &ShapeClient) -> KeyedRows {
        rows::expected_rows(
            &self.durable.pg,
            &items(),
            client.where_clause.as_deref(),
            client.columns.as_deref(),
        )
    }

    /// Polls until the client is up to date and equal to the oracle.
    async fn converge(&self, client: &mut ShapeClient) {
        for _ in 0..200 {
            let request = client.request();
            let response = self.serve(request.clone()).await;
            let outcome = client
                .apply(&request, &response)
                .unwrap_or_else(|v| panic!("violation: {v}"))
                .outcome;
            match outcome {
                Outcome::Data {
                    up_to_date: true, ..
                } if client.rows == self.oracle(client) => return,
                Outcome::Data { .. } | Outcome::Refetch { .. } => {}
                Outcome::Retry { .. } => madsim::time::sleep(Duration::from_millis(50)).await,
                Outcome::Unexpected { status, body } => panic!("unexpected {status}: {body}"),
            }
        }
        panic!(
            "{:?} never converged: {} rows, oracle {}",
            client.where_clause,
            client.rows.len(),
            self.oracle(client).len()
        );
    }

    fn commit(&self, step: u32) {
        let update = |id: u32, n: i64| Mutation::Update {
            table: items(),
            pk: vec![Value::Text(format!("i{id:03}"))],
            set: vec![("n".into(), Value::Int(n))],
        };
        let mutations = vec![
            update(step % 30, i64::from(step * 7 % 40)),
            Mutation::Insert {
                table: items(),
                row: row(100 + step, i64::from(step % 25), Some("added")),
            },
            Mutation::Delete {
                table: items(),
                pk: vec![Value::Text(format!("i{:03}", (step * 11) % 30))],
            },
            // A primary-key change: the row moves to a new key.
            Mutation::Update {
                table: items(),
                pk: vec![Value::Text(format!("i{:03}", (step * 13 + 5) % 30))],
                set: vec![
                    ("id".into(), Value::Text(format!("k{step:03}"))),
                    ("note".into(), Value::Text("alpha moved".into())),
                ],
            },
        ];
        self.durable.pg.commit(&mutations);
    }
}

fn run(seed: u64, test: impl Future<Output = ()> + 'static) {
    Runtime::with_seed_and_config(seed, madsim::Config::default()).block_on(test);
}

#[test]
fn the_stack_serves_snapshots_changes_and_long_polls_across_restarts() {
    run(1, async {
        let world = World::new(config());
        world.until_ready().await;
        let mut clients = vec![
            ShapeClient::new("items", Some("n > 10"), false),
            ShapeClient::new("items", None, true),
            ShapeClient::new("items", Some("note LIKE 'a%' OR n BETWEEN 3 AND 6"), false),
        ];
        for client in &mut clients {
            world.converge(client).await;
        }
        let walk_requests = clients[1].requests;
        assert!(
            walk_requests > 5,
            "a 300-byte chunk size gives a multi-chunk snapshot: {walk_requests} requests"
        );

        for step in 0..10 {
            world.commit(step);
            for client in &mut clients {
                world.converge(client).await;
            }
        }

        // Long-poll wake-up: a live request parked on the shape returns as soon
        // as a change lands, well before the timeout.
        let stack = world.stack();
        let request = clients[1].request();
        let started_ms = now_ms();
        let parked = world.node().spawn({
            let request = request.clone();
            async move { stack.serve(&request).await }
        });
        madsim::time::sleep(Duration::from_millis(300)).await;
        world.commit(50);
        let response = parked.await.unwrap();
        let waited = Duration::from_millis(now_ms() - started_ms);
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(1_000),
            "woke after {waited:?}"
        );
        let outcome = clients[1].apply(&request, &response).map(|a| a.outcome);
        assert!(
            matches!(outcome, Ok(Outcome::Data { messages, .. }) if messages >= 1),
            "{outcome:?} {response:?}"
        );
        for client in &mut clients {
            world.converge(client).await;
        }

        // Graceful restart: clients continue from their offsets, no refetch.
        let refetches: Vec<u64> = clients.iter().map(|c| c.refetches).collect();
        let before = world.events.all().len();
        world.graceful_restart().await;
        world.until_ready().await;
        // The engine says what it did: a clean stop, then every shape restored.
        let events = world.events.all().split_off(before);
        let position = |wanted: &dyn Fn(&Event) -> bool| events.iter().position(wanted);
        let finished = position(&|e| *e == Event::ShutdownFinished { clean: true });
        let booted = position(&|e| {
            *e == Event::BootStarted {
                previous_stop_clean: true,
            }
        });
        assert!(finished.is_some() && finished < booted, "{events:#?}");
        let restored = events
            .iter()
            .filter(|e| matches!(e, Event::ShapeRestored { .. }))
            .count();
        assert_eq!(restored, 3, "every shape comes back: {events:#?}");
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Event::BootDropped { .. } | Event::ShapeRemoved { .. })),
            "nothing is dropped after a clean stop: {events:#?}"
        );
        for step in 10..15 {
            world.commit(step);
        }
        for client in &mut clients {
            world.converge(client).await;
        }
        assert_eq!(
            clients.iter().map(|c| c.refetches).collect::<Vec<_>>(),
            refetches,
            "no 409 after a graceful restart"
        );

        // Brutal kill right after commits (some of them unflushed), reboot.
        for step in 15..20 {
            world.commit(step);
        }
        madsim::time::sleep(Duration::from_millis(3)).await;
        world.kill_and_restart().await;
        assert_eq!(world.stack().previous_stop_clean(), Some(false));
        for step in 20..25 {
            world.commit(step);
        }
        for client in &mut clients {
            world.converge(client).await;
        }
        // A fresh client sees the same as the continuing ones.
        let mut fresh = ShapeClient::new("items", Some("n > 10"), false);
        world.converge(&mut fresh).await;
        assert_eq!(fresh.rows, clients[0].rows);

        // Removal on request (Electric's DELETE): 202, then 409 for its clients.
        let handle = fresh.handle.clone().unwrap();
        let delete = |h: &str| Request::new([("handle", h)]);
        let stack = world.stack();
        let (gone, again, bad, blank) = world
            .node()
            .spawn(async move {
                let gone = stack.delete(delete(&handle)).await;
                let again = stack.delete(delete(&handle)).await;
                let bad = stack.delete(delete("../x")).await;
                let blank = stack.delete(Request::default()).await;
                (gone, again, bad, blank)
            })
            .await
            .unwrap();
        assert_eq!((gone.status, again.status), (202, 404));
        assert_eq!((bad.status, blank.status), (400, 400));
        assert!(
            bad.body.contains("\"handle\""),
            "400 names the parameter: {}",
            bad.body
        );
        let removed = Event::ShapeRemoved {
            handle: engine::handle::ShapeHandle::parse(fresh.handle.as_deref().unwrap()).unwrap(),
            reason: RemovalReason::Requested,
        };
        assert!(world.events.all().contains(&removed));
        let refetches_before = clients[0].refetches;
        world.converge(&mut clients[0]).await;
        assert_eq!(
            clients[0].refetches,
            refetches_before + 1,
            "its client refetched"
        );
    });
}

#[test]
fn metadata_lost_in_a_kill_gives_409_then_convergence_and_orphans_are_removed() {
    run(2, async {
        let mut config = config();
        config.meta.flush_period_ms = 60_000; // nothing reaches SQLite before the kill
        let world = World::new(config);
        world.until_ready().await;
        let mut client = ShapeClient::new("items", Some("n >= 20"), false);
        world.converge(&mut client).await;
        let lost = client.handle.clone().unwrap();
        let dir = format!("shapes/{lost}");
        assert!(world.durable.storage.exists(&dir).await.unwrap());

        world.kill_and_restart().await;
        assert!(
            !world.durable.storage.exists(&dir).await.unwrap(),
            "the orphaned shape directory is removed at boot"
        );
        let lost_handle = engine::handle::ShapeHandle::parse(&lost).unwrap();
        assert!(
            world.events.all().contains(&Event::BootDropped {
                handle: lost_handle,
                reason: RemovalReason::MetadataLost,
            }),
            "boot says why it dropped the shape"
        );
        world.commit(1);
        let request = client.request();
        let response = world.serve(request.clone()).await;
        assert_eq!(response.status, 409, "{}", response.body);
        assert_eq!(response.body, r#"[{"headers":{"control":"must-refetch"}}]"#);
        let outcome = client.apply(&request, &response).unwrap().outcome;
        let Outcome::Refetch {
            new_handle: Some(new_handle),
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        assert_ne!(new_handle, lost);
        world.converge(&mut client).await;
        assert_eq!(client.refetches, 1);
    });
}

#[test]
fn malformed_requests_get_400_naming_the_field_and_bad_handles_never_reach_storage() {
    run(3, async {
        let world = World::new(config());
        world.until_ready().await;
        let mut good = ShapeClient::new("items", None, false);
        world.converge(&mut good).await;
        let handle = good.handle.clone().unwrap();
        // (query parameters, the parameter the 400 must name, a fragment of its message)
        type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
        let cases: Vec<Case> = vec![
            (vec![("table", "items")], "offset", "can't be blank"),
            (vec![("offset", "-1")], "table", "can't be blank"),
            (
                vec![("table", "items"), ("offset", "abc")],
                "offset",
                "invalid format",
            ),
            (
                vec![("table", "items"), ("offset", "5_2")],
                "handle",
                "can't be blank",
            ),
            (
                vec![("table", "items"), ("offset", "5_2"), ("handle", "../x")],
                "handle",
                "invalid format",
            ),
            (
                vec![("table", "items"), ("offset", "-1"), ("live", "true")],
                "live",
                "offset is -1",
            ),
            (
                vec![("table", "items"), ("offset", "-1"), ("live", "maybe")],
                "live",
                "true or false",
            ),
            (
                vec![("table", "items"), ("offset", "-1"), ("replica", "half")],
                "replica",
                "default or full",
            ),
            (
                vec![("table", "nope"), ("offset", "-1")],
                "table",
                "does not exist",
            ),
            (
                vec![("table", "items"), ("offset", "-1"), ("columns", "id,nope")],
                "columns",
                "unknown column",
            ),
            (
                vec![("table", "items"), ("offset", "-1"), ("where", "nope = 1")],
                "where",
                "unknown column",
            ),
            (
                vec![("table", "items"), ("offset", "-1"), ("where", "n = ")],
                "where",
                "invalid WHERE",
            ),
            (
                vec![
                    ("table", "items"),
                    ("offset", "-1"),
                    ("where", "lower(note) = 'a'"),
                ],
                "where",
                "function call",
            ),
            (
                vec![
                    ("table", "items"),
                    ("offset", "-1"),
                    (
                        "where",
                        "id IN (SELECT id FROM items WHERE id IN (SELECT id FROM items WHERE id IN (SELECT id FROM items WHERE id IN (SELECT id FROM items))))",
                    ),
                ],
                "where",
                "nest at most 3 levels",
            ),
            (
                vec![
                    ("table", "items"),
                    ("offset", "-1"),
                    (
                        "where",
                        "id IN (SELECT id FROM items) OR id NOT IN (SELECT id FROM items)",
                    ),
                ],
                "where",
                "both with IN and with NOT IN",
            ),
            (
                vec![
                    ("table", "items"),
                    ("offset", "999999_0"),
                    ("handle", handle.as_str()),
                ],
                "offset",
                "out of bounds",
            ),
        ];
        let before = list_all(&world.durable.storage).await;
        for (params, field, fragment) in cases {
            let response = world.serve(Request::new(params.clone())).await;
            assert_eq!(response.status, 400, "{params:?}: {}", response.body);
            let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
            assert_eq!(body["message"], "Invalid request");
            let messages = body["errors"][field]
                .as_array()
                .unwrap_or_else(|| panic!("{params:?}: no error for {field}: {body}"));
            assert!(
                messages
                    .iter()
                    .any(|m| m.as_str().unwrap().contains(fragment)),
                "{params:?}: {body}"
            );
        }
        assert_eq!(
            list_all(&world.durable.storage).await,
            before,
            "no request above created or touched a path"
        );
        assert!(!world.durable.storage.exists("x").await.unwrap());
    });
}

/// Every path in the storage, sorted.
async fn list_all(storage: &MemStorage) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        for name in storage.list(&dir).await.unwrap() {
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            if storage.list(&path).await.is_ok() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn a_shape_created_after_a_schema_change_on_an_idle_database_gets_up_to_date() {
    run(21, async {
        let world = World::new(config());
        world.until_ready().await;
        world.commit(0);
        // Nothing commits after it: the snapshot's WAL position is the
        // schema change, and only a keepalive says replication reached it.
        world.durable.pg.add_column(&items(), "extra");
        let mut client = ShapeClient::new("items", Some("n > 10"), false);
        world.converge(&mut client).await;
        let pg = &world.durable.pg;
        for _ in 0..100 {
            if pg.slot_confirmed() == pg.last_lsn() {
                break;
            }
            madsim::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            pg.slot_confirmed(),
            pg.last_lsn(),
            "the slot is acknowledged up to the schema change"
        );
        assert!(
            world
                .events
                .all()
                .iter()
                .any(|e| matches!(e, Event::CaughtUp { wal_end } if *wal_end == pg.last_lsn()))
        );
    });
}

#[test]
fn a_shape_removed_by_a_schema_change_never_returns_with_a_gap_after_a_kill() {
    for seed in 0..8 {
        run(10 + seed, async {
            let mut config = config();
            config.log.flush_period_ms = 10_000; // the shape's data stays unflushed
            config.meta.flush_period_ms = 10_000; // and its metadata removal too
            let world = World::new(config);
            world.until_ready().await;
            let mut client = ShapeClient::new("items", Some("n > 10"), false);
            client.columns = Some("id,n,note".into());
            world.converge(&mut client).await;
            for step in 0..5 {
                world.commit(step);
            }
            world.converge(&mut client).await;
            // The schema change removes the shape; give acknowledgements time to move.
            world.durable.pg.add_column(&items(), "extra");
            madsim::time::sleep(Duration::from_millis(50)).await;
            world.kill_and_restart().await;
            world.commit(9);
            // Whatever survived, the client ends with exactly the oracle's rows
            // (the strict client fails on any gap: an update of an unknown key).
            world.converge(&mut client).await;
            assert!(
                client.refetches >= 1,
                "the shape was removed: its holder must refetch"
            );
        });
    }
}

#[test]
fn a_shape_requested_during_a_graceful_shutdown_never_gets_a_409_after_it() {
    for seed in 0..8 {
        run(20 + seed, async {
            let world = World::new(config());
            world.until_ready().await;
            let stack = world.stack();
            let shutdown = world.node().spawn(async move { stack.shutdown().await });
            let mut late = ShapeClient::new("items", Some("note IS NOT NULL"), false);
            let request = late.request();
            let response = world.serve(request.clone()).await;
            let outcome = late.apply(&request, &response).unwrap().outcome;
            assert!(shutdown.await.unwrap(), "the drain must be clean");
            world.kill_and_restart().await;
            // A client that got a handle keeps it across the graceful restart.
            if matches!(outcome, Outcome::Data { .. }) {
                let response = world.serve(late.request()).await;
                assert_ne!(
                    response.status, 409,
                    "a handle issued during the drain was lost: {}",
                    response.body
                );
            }
            world.converge(&mut late).await;
        });
    }
}

/// Reads a shape's whole log, following offsets until an up-to-date
/// names an LSN at or past `lsn`: every message, in order.
async fn read_log(world: &World, where_clause: &str, lsn: u64) -> Vec<serde_json::Value> {
    let (mut offset, mut handle, mut messages) = ("-1".to_string(), None::<String>, Vec::new());
    for _ in 0..200 {
        let mut params = vec![
            ("table", "items".to_string()),
            ("where", where_clause.to_string()),
        ];
        params.push(("offset", offset.clone()));
        if let Some(h) = &handle {
            params.push(("handle", h.clone()));
        }
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = world.serve(Request::new(params)).await;
        if response.status != 200 {
            madsim::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        handle = response.header("electric-handle").map(str::to_string);
        offset = response.header("electric-offset").unwrap().to_string();
        let body: Vec<serde_json::Value> = serde_json::from_str(&response.body).unwrap();
        let mut done = false;
        for message in body {
            let seen = message["headers"]["global_last_seen_lsn"].as_str();
            if let Some(seen) = seen {
                done = seen.parse::<u64>().unwrap() >= lsn;
            } else {
                messages.push(message);
            }
        }
        if done {
            return messages;
        }
        madsim::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{where_clause} never reached lsn {lsn}");
}

#[test]
fn a_subquery_shape_log_through_a_move_in_and_a_move_out_is_pinned() {
    run(7, async {
        let world = World::new(config());
        world.until_ready().await;
        let clause = "n < 12 AND id IN (SELECT id FROM items WHERE note = 'alpha')";
        let note = |id: &str, note: &str| Mutation::Update {
            table: items(),
            pk: vec![Value::Text(id.into())],
            set: vec![("note".into(), Value::Text(note.into()))],
        };
        let pg = &world.durable.pg;
        read_log(&world, clause, 0).await;
        // i001 gains the tag: its value moves in, the row with it.
        pg.commit(&[note("i001", "alpha")]);
        // i003 loses it: a move-out, no per-row delete.
        pg.commit(&[note("i003", "beta")]);
        // A change of a row in the shape: tags, active conditions, removed tags.
        pg.commit(&[Mutation::Update {
            table: items(),
            pk: vec![Value::Text("i006".into())],
            set: vec![("n".into(), Value::Int(7))],
        }]);
        let log = read_log(&world, clause, pg.last_lsn()).await;
        let text: Vec<String> = log.iter().map(|m| m.to_string()).collect();
        insta::assert_snapshot!(text.join("\n"));
    });
}
