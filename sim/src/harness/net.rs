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
use super::timeline::{Kind, Track};
use super::trace::{SharedTrace, record};
use crate::pg::{ContractViolation, PgModel, SlotBusy, StreamCursor, StreamItem};
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
/// The second engine instance's address (the new one of a rolling restart).
pub const ENGINE_B_IP: &str = "10.0.0.4";
pub const CLIENT_IP: &str = "10.0.0.3";

pub fn pg_addr() -> SocketAddr {
    format!("{PG_IP}:5432").parse().expect("address")
}

/// The API address of the engine instance at `ip`.
pub fn engine_addr(ip: &str) -> SocketAddr {
    format!("{ip}:3000").parse().expect("address")
}

/// Where clients send requests: the serving instance, switched at a rolling
/// restart's handover (a load balancer's job).
pub type EngineRoute = Arc<Mutex<SocketAddr>>;

fn route(to: &EngineRoute) -> SocketAddr {
    *to.lock().expect("engine route")
}

macro_rules! rpc {
    ($request:ty => $response:ty) => {
        impl Rpc for $request {
            type Response = $response;
            const ID: u64 = madsim::net::rpc::hash_str(stringify!($request));
        }
    };
}

/// A replication connection request from the engine instance at `client`.
#[derive(Serialize, Deserialize)]
pub struct PgStart {
    pub client: String,
}
#[derive(Serialize, Deserialize)]
pub struct PgNext {
    pub connection: u64,
    pub cursor: StreamCursor,
}
/// The `.1`-th acknowledgement on replication connection `.0`.
#[derive(Serialize, Deserialize)]
pub struct PgAck(pub u64, pub u64, pub Lsn);
#[derive(Serialize, Deserialize)]
pub struct PgCatalog;
#[derive(Serialize, Deserialize)]
pub struct PgSnapshot(pub SnapshotQuery);
#[derive(Serialize, Deserialize)]
pub struct ShapeGet(pub Arc<api::Request>);
#[derive(Serialize, Deserialize)]
pub struct ShapeDelete(pub api::Request);

rpc!(PgStart => Result<(u64, Lsn, Lsn), String>);
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
    ep.add_rpc_handler(move |req: PgStart| {
        let (model, trace) = (model.clone(), t.clone());
        async move {
            match model.connect(&req.client, crate::host::now_ms()) {
                Ok((connection, confirmed, wal_end)) => {
                    record(
                        &trace,
                        format_args!(
                            "replication connection {connection}: slot at {confirmed}, WAL at {wal_end}"
                        ),
                    );
                    Ok((connection, confirmed, wal_end))
                }
                Err(SlotBusy(holder)) => {
                    record(&trace, format_args!("replication refused: the slot is held by connection {holder}"));
                    Err(format!("replication slot is active for connection {holder}"))
                }
            }
        }
    });
    let (model, t) = (pg.clone(), trace.clone());
    ep.add_rpc_handler(move |req: PgNext| {
        let (model, trace) = (model.clone(), t.clone());
        async move {
            // Asking for what follows `after` proves the engine received
            // everything up to it (a sent answer may still be lost).
            model.note_delivered(req.cursor.after);
            model.touch(req.connection, crate::host::now_ms());
            let committed = model.commits();
            let item = match model.message_after(&req.cursor) {
                Some(item) => Some(item),
                None => {
                    let hold = madsim::time::sleep(Duration::from_millis(PULL_HOLD_MS));
                    future::select(committed, std::pin::pin!(hold)).await;
                    model.message_after(&req.cursor)
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
                Some(StreamItem::Keepalive(lsn)) => record(
                    &trace,
                    format_args!("postgres sends keepalive: WAL at {lsn}"),
                ),
                Some(StreamItem::Wal(_, ReplicationMessage::Keepalive { .. })) => {
                    unreachable!("keepalives are not WAL entries")
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
            let args = vec![("lsn", lsn.to_string())];
            super::timeline::instant(&trace, Track::Postgres, Kind::Ack, "ack".into(), args);
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
                    "snapshot of {} where {:?}: {} rows, xmin {} xmax {} in progress {:?}",
                    query.table,
                    query.where_sql,
                    result.rows.len(),
                    result.visibility.xmin,
                    result.visibility.xmax,
                    result.visibility.xip_list
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
    /// The engine instance's address (Postgres tells clients apart by it).
    ip: String,
    trace: SharedTrace,
}

impl RemotePg {
    pub async fn connect(ip: &str, trace: SharedTrace) -> RemotePg {
        let ep = Endpoint::bind(format!("{ip}:0"))
            .await
            .expect("bind engine client endpoint");
        RemotePg {
            ep,
            ip: ip.to_string(),
            trace,
        }
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
        let (connection, confirmed_lsn, wal_end_lsn) = self
            .call(PgStart {
                client: self.ip.to_string(),
            })
            .await?
            .map_err(SourceError)?;
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
                connection: self.connection,
                cursor,
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
pub async fn serve_engine(stack: engine::stack::Stack, ip: &str) {
    let ep = Endpoint::bind(engine_addr(ip)).await.expect("bind engine");
    let serving = stack.clone();
    ep.add_rpc_handler(move |ShapeGet(request)| {
        let stack = serving.clone();
        super::panics::on_engine(async move { stack.serve(&request).await })
    });
    ep.add_rpc_handler(move |ShapeDelete(request)| {
        let stack = stack.clone();
        super::panics::on_engine(async move { stack.delete(request).await })
    });
    futures::future::pending::<()>().await;
}

/// The clients' side of the network: their endpoint and where requests go.
#[derive(Clone)]
pub struct ClientNet {
    pub ep: Endpoint,
    pub route: EngineRoute,
}

impl ClientNet {
    /// A removal request; `None` if it (or its answer) was lost.
    pub async fn delete(&self, request: api::Request, timeout_ms: u64) -> Option<api::Response> {
        let to = route(&self.route);
        let timeout = Duration::from_millis(timeout_ms);
        self.ep
            .call_timeout(to, ShapeDelete(request), timeout)
            .await
            .ok()
    }

    /// A client's request; `None` if it (or its answer) was lost.
    pub async fn get(&self, request: Arc<api::Request>, timeout_ms: u64) -> Option<api::Response> {
        let to = route(&self.route);
        let timeout = Duration::from_millis(timeout_ms);
        self.ep
            .call_timeout(to, ShapeGet(request), timeout)
            .await
            .ok()
    }
}
