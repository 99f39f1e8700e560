//! Everything that crosses madsim's network: client <-> engine requests and
//! engine <-> Postgres replication and queries, as RPCs with timeouts, so
//! that latency, loss and partitions apply to them.
//!
//! The replication pull is idempotent: the engine asks for "the next message
//! after LSN x" rather than "the next message", so a lost or retried request
//! never skips or repeats a message. After too many failures the engine's
//! stream reports an error and the engine reconnects, replaying from the
//! slot's confirmed LSN as Postgres would.

use super::checker::Verdict;
use super::checks::Failure;
use super::trace::{SharedTrace, record};
use crate::pg::{ContractViolation, PgModel, StreamCursor, StreamItem};
use async_trait::async_trait;
use engine::api;
use engine::replication::{
    Connection, Lsn, PostgresQueries, ReplicationMessage, ReplicationSource, ReplicationStream,
    SnapshotQuery, SnapshotResult, SourceError,
};
use engine::schema::Catalog;
use futures::future;
use madsim::net::Endpoint;
use madsim::net::rpc::Request as Rpc;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const PG_IP: &str = "10.0.0.1";
pub const ENGINE_IP: &str = "10.0.0.2";
pub const CLIENT_IP: &str = "10.0.0.3";

pub fn pg_addr() -> SocketAddr {
    format!("{PG_IP}:5432").parse().expect("address")
}

pub fn engine_addr() -> SocketAddr {
    format!("{ENGINE_IP}:3000").parse().expect("address")
}

macro_rules! rpc {
    ($request:ty => $response:ty) => {
        impl Rpc for $request {
            type Response = $response;
            const ID: u64 = madsim::net::rpc::hash_str(stringify!($request));
        }
    };
}

#[derive(Serialize, Deserialize)]
pub struct PgStart;
#[derive(Serialize, Deserialize)]
pub struct PgNext {
    pub after: Lsn,
    pub relations_seen: usize,
}
/// The `.1`-th acknowledgement on replication connection `.0`.
#[derive(Serialize, Deserialize)]
pub struct PgAck(pub u64, pub u64, pub Lsn);
#[derive(Serialize, Deserialize)]
pub struct PgCatalog;
#[derive(Serialize, Deserialize)]
pub struct PgSnapshot(pub SnapshotQuery);
#[derive(Serialize, Deserialize)]
pub struct ShapeGet(pub api::Request);
#[derive(Serialize, Deserialize)]
pub struct ShapeDelete(pub api::Request);

rpc!(PgStart => (u64, Lsn, Lsn));
rpc!(PgNext => Option<StreamItem>);
rpc!(PgAck => ());
rpc!(PgCatalog => Catalog);
rpc!(PgSnapshot => SnapshotResult);
rpc!(ShapeGet => api::Response);
rpc!(ShapeDelete => api::Response);

/// How long the Postgres side holds an idle replication pull.
const PULL_HOLD_MS: u64 = 200;
/// An RPC without an answer after this long is lost (and retried): like a
/// TCP retransmission, a lost packet costs a delay, not the connection.
const RPC_TIMEOUT: Duration = Duration::from_millis(PULL_HOLD_MS + 300);
/// Consecutive failed pulls (about ten seconds of silence) before the stream
/// reports a broken connection, as `wal_sender_timeout` would.
const PULL_ATTEMPTS: u32 = 20;

/// Serves the Postgres model on its node. An engine that breaks the slot's
/// side of the contract fails the run (`engine-contract`).
pub async fn serve_postgres(pg: PgModel, trace: SharedTrace, verdict: Arc<Verdict>) {
    let ep = Endpoint::bind(pg_addr()).await.expect("bind postgres");
    let model = pg.clone();
    let t = trace.clone();
    ep.add_rpc_handler(move |_: PgStart| {
        let (model, trace) = (model.clone(), t.clone());
        async move {
            let (connection, confirmed, wal_end) = model.connect();
            record(
                &trace,
                format_args!(
                    "replication connection {connection}: slot at {confirmed}, WAL at {wal_end}"
                ),
            );
            (connection, confirmed, wal_end)
        }
    });
    let (model, t) = (pg.clone(), trace.clone());
    ep.add_rpc_handler(move |req: PgNext| {
        let (model, trace) = (model.clone(), t.clone());
        async move {
            // Asking for what follows `after` proves the engine received
            // everything up to it (a sent answer may still be lost).
            model.note_delivered(req.after);
            let committed = model.commits();
            let item = match model.message_after(req.after, req.relations_seen) {
                Some(item) => Some(item),
                None => {
                    let hold = madsim::time::sleep(Duration::from_millis(PULL_HOLD_MS));
                    future::select(committed, std::pin::pin!(hold)).await;
                    model.message_after(req.after, req.relations_seen)
                }
            };
            match &item {
                Some(StreamItem::Wal(lsn, ReplicationMessage::Transaction(_))) => {
                    record(&trace, format_args!("postgres delivers lsn {lsn}"));
                }
                Some(StreamItem::Wal(lsn, ReplicationMessage::Relation(t))) => {
                    record(
                        &trace,
                        format_args!("postgres delivers relation {} at lsn {lsn}", t.name),
                    );
                }
                Some(StreamItem::Relation(t)) => {
                    record(&trace, format_args!("postgres sends relation {}", t.name))
                }
                None => {}
            }
            item
        }
    });
    let (model, t) = (pg.clone(), trace.clone());
    ep.add_rpc_handler(move |PgAck(connection, seq, lsn)| {
        let (model, trace, verdict) = (model.clone(), t.clone(), verdict.clone());
        async move {
            record(
                &trace,
                format_args!("slot acknowledged to lsn {lsn} (connection {connection})"),
            );
            if let Err(ContractViolation(why)) = model.acknowledge(connection, seq, lsn) {
                verdict.fail(Failure::new("engine-contract", why, None, &trace));
            }
        }
    });
    let model = pg.clone();
    ep.add_rpc_handler(move |_: PgCatalog| {
        let model = model.clone();
        async move { model.catalog() }
    });
    let (model, t) = (pg, trace);
    ep.add_rpc_handler(move |PgSnapshot(query)| {
        let (model, trace) = (model.clone(), t.clone());
        async move {
            let result = model.snapshot_now(&query);
            record(
                &trace,
                format_args!(
                    "snapshot of {} where {:?}: {} rows",
                    query.table,
                    query.where_sql,
                    result.rows.len()
                ),
            );
            result
        }
    });
    futures::future::pending::<()>().await;
}

/// The engine's view of Postgres across the network.
pub struct RemotePg {
    ep: Endpoint,
    trace: SharedTrace,
}

impl RemotePg {
    pub async fn connect(trace: SharedTrace) -> RemotePg {
        let ep = Endpoint::bind(format!("{ENGINE_IP}:0"))
            .await
            .expect("bind engine client endpoint");
        RemotePg { ep, trace }
    }

    async fn call<R: Rpc>(&self, request: R) -> Result<R::Response, SourceError> {
        let result = self.ep.call_timeout(pg_addr(), request, RPC_TIMEOUT).await;
        result.map_err(|e| {
            record(
                &self.trace,
                format_args!(
                    "engine: {} to postgres failed: {e}",
                    std::any::type_name::<R>()
                        .rsplit("::")
                        .next()
                        .unwrap_or("rpc")
                ),
            );
            SourceError(e.to_string())
        })
    }
}

struct RemoteStream {
    ep: Endpoint,
    connection: u64,
    /// Acknowledgements sent so far: each carries its number, so that the
    /// slot applies them in the order sent (as one TCP connection would).
    acks_sent: std::sync::atomic::AtomicU64,
    cursor: Mutex<StreamCursor>,
}

#[async_trait]
impl ReplicationSource for RemotePg {
    async fn start(&self) -> Result<Connection, SourceError> {
        let (connection, confirmed_lsn, wal_end_lsn) = self.call(PgStart).await?;
        let stream = Arc::new(RemoteStream {
            ep: self.ep.clone(),
            connection,
            acks_sent: Default::default(),
            cursor: Mutex::new(StreamCursor::at(confirmed_lsn)),
        });
        Ok(Connection {
            confirmed_lsn,
            wal_end_lsn,
            stream,
        })
    }
}

#[async_trait]
impl ReplicationStream for RemoteStream {
    async fn next(&self) -> Result<ReplicationMessage, SourceError> {
        let mut failures = 0;
        loop {
            let cursor = *self.cursor.lock().expect("cursor");
            let request = PgNext {
                after: cursor.after,
                relations_seen: cursor.relations_seen,
            };
            match self.ep.call_timeout(pg_addr(), request, RPC_TIMEOUT).await {
                Ok(Some(item)) => return Ok(self.cursor.lock().expect("cursor").advance(item)),
                Ok(None) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures >= PULL_ATTEMPTS {
                        return Err(SourceError(format!("replication connection lost: {e}")));
                    }
                }
            }
        }
    }

    async fn acknowledge(&self, lsn: Lsn) -> Result<(), SourceError> {
        self.ep
            .call_timeout(
                pg_addr(),
                PgAck(
                    self.connection,
                    self.acks_sent
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                    lsn,
                ),
                RPC_TIMEOUT,
            )
            .await
            .map_err(|e| SourceError(e.to_string()))
    }
}

#[async_trait]
impl PostgresQueries for RemotePg {
    async fn catalog(&self) -> Result<Catalog, SourceError> {
        self.call(PgCatalog).await
    }

    async fn snapshot(&self, query: SnapshotQuery) -> Result<SnapshotResult, SourceError> {
        self.call(PgSnapshot(query)).await
    }
}

/// Serves client requests on the engine's node.
pub async fn serve_engine(stack: engine::stack::Stack) {
    let ep = Endpoint::bind(engine_addr()).await.expect("bind engine");
    let serving = stack.clone();
    ep.add_rpc_handler(move |ShapeGet(request)| {
        let stack = serving.clone();
        super::panics::on_engine(async move { stack.serve(request).await })
    });
    ep.add_rpc_handler(move |ShapeDelete(request)| {
        let stack = stack.clone();
        super::panics::on_engine(async move { stack.delete(request).await })
    });
    futures::future::pending::<()>().await;
}

/// A removal request; `None` if it (or its answer) was lost.
pub async fn delete(
    ep: &Endpoint,
    request: api::Request,
    timeout_ms: u64,
) -> Option<api::Response> {
    ep.call_timeout(
        engine_addr(),
        ShapeDelete(request),
        Duration::from_millis(timeout_ms),
    )
    .await
    .ok()
}

/// A client's request; `None` if it (or its answer) was lost.
pub async fn get(ep: &Endpoint, request: api::Request, timeout_ms: u64) -> Option<api::Response> {
    ep.call_timeout(
        engine_addr(),
        ShapeGet(request),
        Duration::from_millis(timeout_ms),
    )
    .await
    .ok()
}
