//! Restarts of the engine, by kind:
//!
//! - `crash`: the node's tasks are dropped wherever they are (at the armed
//!   crash point, or after the drawn delay); the disk keeps what was written;
//! - `power`: a crash, then a power loss (`MemStorage::power_loss`, torn
//!   from the restart's seed);
//! - `graceful`: the shutdown coordinator runs to its end, then the node is
//!   killed; a ready engine must stop cleanly;
//! - `interrupted-graceful`: the coordinator starts and the node is killed
//!   midway (at `shutdown.after_drain`, or after a few milliseconds);
//! - `rolling`: a new instance (the other node) starts while the old one
//!   serves; it waits for the replication slot before it touches the disk;
//!   the old one shuts down gracefully and exits (its slot connection
//!   closes), the clients are routed to the new one, which takes over the
//!   same slot, disk and metadata database.
//!
//! Any kill may be followed by a second one while the restarted engine
//! boots (at a boot-time crash point): recovery itself must be restartable.

use super::checker;
use super::checks::Failure;
use super::panics::on_engine;
use super::timeline::{Kind, Track, instant};
use super::world::World;
use crate::scenario::{Restart, RestartKind};
use engine::env::{CrashPoint, PowerLoss};
use madsim::runtime::Handle;
use std::time::Duration;

/// How long a boot may take to reach its armed crash point.
const BOOT_WINDOW_MS: u64 = 2_000;

impl World {
    /// The restart after a batch, of its kind.
    pub(super) async fn restart(&mut self, restart: &Restart) -> Result<(), Failure> {
        match restart.kind {
            RestartKind::Crash | RestartKind::Power => self.kill(restart).await,
            RestartKind::Graceful => {
                madsim::time::sleep(Duration::from_millis(restart.kill_delay_ms)).await;
                return self.graceful_restart().await;
            }
            RestartKind::InterruptedGraceful => self.interrupted_graceful(restart).await,
            RestartKind::Rolling => return self.rolling(restart).await,
        }
        Ok(())
    }

    /// The new instance starts beside the old; after the overlap the old
    /// one stops gracefully and exits, and the new one takes over.
    async fn rolling(&mut self, restart: &Restart) -> Result<(), Failure> {
        assert!(
            self.engine.shares_disk_with(&self.standby),
            "harness: a rolling restart hands one disk (storage and metadata) to the new instance"
        );
        let handle = Handle::current();
        handle.restart(self.standby.id());
        self.standby.node = handle.get_node(self.standby.id()).expect("standby node");
        self.record(format!(
            "rolling: a new instance starts at {}",
            self.standby.ip
        ));
        // Meanwhile the new instance must leave the disk alone (the disk
        // owner check fails the run if it touches it).
        madsim::time::sleep(Duration::from_millis(restart.kill_delay_ms)).await;
        let clean = self.graceful_stop().await?;
        self.exit_engine(!clean);
        std::mem::swap(&mut self.engine, &mut self.standby);
        *self.net.route.lock().expect("engine route") = super::net::engine_addr(self.engine.ip);
        self.crash.set_node(self.engine.id());
        self.record(format!("rolling: clients are routed to {}", self.engine.ip));
        checker::lock(&self.checker)
            .coverage
            .restart(RestartKind::Rolling);
        Ok(())
    }

    /// The serving instance's process exits (its slot connection closes
    /// with it); `lossy` if it stopped without a clean shutdown.
    fn exit_engine(&mut self, lossy: bool) {
        Handle::current().kill(self.engine.id());
        self.disk_owner.exited(self.engine.ip);
        self.pg.release_slot();
        *self.engine.stack.lock().expect("stack slot") = None;
        checker::lock(&self.checker).killed(lossy);
    }

    /// A crash or power kill after a batch, at the armed crash point or
    /// after the drawn delay, then a restart (and maybe a kill during boot).
    async fn kill(&mut self, restart: &Restart) {
        if restart.crash_point.is_some() {
            let window = restart.kill_delay_ms + self.scenario.timing.kill_window_ms + 1_000;
            if !self.crash.wait_fired(window).await {
                self.record("the armed crash point was not reached: kill anyway".to_string());
            }
        } else {
            madsim::time::sleep(Duration::from_millis(restart.kill_delay_ms)).await;
        }
        self.kill_now(restart.kind, restart.power_seed);
        self.boot_kill(restart).await;
    }

    /// Kills the node now (a power loss too for `power`), accounts for it,
    /// and restarts the node.
    fn kill_now(&mut self, kind: RestartKind, power_seed: u64) {
        let fired = self.crash.fired();
        self.crash.disarm();
        let at = fired.map_or("after the drawn delay".to_string(), |p| p.to_string());
        let name = format!("{} kill", kind.name());
        instant(
            &self.trace,
            Track::Restarts,
            Kind::Kill,
            name,
            vec![("crash point", at)],
        );
        self.exit_engine(true);
        let mut checker = checker::lock(&self.checker);
        if let Some(point) = fired {
            checker.coverage.point(point).fired += 1;
        }
        if kind == RestartKind::Power {
            let report = self
                .storage
                .power_loss(PowerLoss::Torn { seed: power_seed });
            checker.coverage.power_loss(&report);
            drop(checker);
            let args = vec![
                ("bytes dropped", report.bytes_dropped.to_string()),
                ("files torn", report.files_torn.to_string()),
            ];
            instant(
                &self.trace,
                Track::Restarts,
                Kind::PowerLoss,
                "power loss".into(),
                args,
            );
            self.record(format!("power loss: {report:?}"));
        } else {
            drop(checker);
        }
        self.record(format!("{} kill of the engine", kind.name()));
        self.start_engine();
    }

    /// Starts the serving instance's node again.
    fn start_engine(&mut self) {
        let handle = Handle::current();
        handle.restart(self.engine.id());
        self.engine.node = handle.get_node(self.engine.id()).expect("engine node");
    }

    /// A second kill while the restarted engine boots, at the restart's
    /// boot crash point (if it has one and boot reaches it).
    async fn boot_kill(&mut self, restart: &Restart) {
        let Some((name, nth)) = restart.boot_crash_point.clone() else {
            checker::lock(&self.checker).coverage.restart(restart.kind);
            return;
        };
        let point: CrashPoint = name
            .parse()
            .unwrap_or_else(|e| panic!("scenario names a crash point: {e}"));
        // The node restarted in this same step: boot has not run yet.
        self.crash.arm(point, nth);
        checker::lock(&self.checker).coverage.point(point).armed += 1;
        self.record(format!("armed boot crash point {point} (visit {nth})"));
        if self.crash.wait_fired(BOOT_WINDOW_MS).await {
            checker::lock(&self.checker)
                .coverage
                .paths
                .kills_during_boot += 1;
            self.kill_now(restart.kind, restart.power_seed.rotate_left(1));
        } else {
            self.crash.disarm();
            self.record("the boot crash point was not reached".to_string());
        }
        checker::lock(&self.checker).coverage.restart(restart.kind);
    }

    /// Shuts the engine down through its coordinator and restarts it.
    async fn graceful_restart(&mut self) -> Result<(), Failure> {
        let clean = self.graceful_stop().await?;
        self.exit_engine(!clean);
        checker::lock(&self.checker)
            .coverage
            .restart(RestartKind::Graceful);
        self.start_engine();
        Ok(())
    }

    /// Runs the serving instance's shutdown coordinator to its end; whether
    /// it was clean. An engine that was ready must stop cleanly (everything
    /// flushed, marker written) within its shutdown timeout, unless a fault
    /// during the drain explains it (an injected I/O error failed a shape;
    /// Postgres was cut off while a snapshot had to finish).
    async fn graceful_stop(&mut self) -> Result<bool, Failure> {
        let stack = self.running_stack();
        let shutdown_ms = crate::host::now_ms();
        checker::lock(&self.checker).shutdown_started();
        let (was_ready, clean) = self
            .engine
            .node
            .spawn(on_engine(async move {
                let ready = stack.status() == engine::stack::Status::Ready;
                (ready, stack.shutdown().await)
            }))
            .await
            .expect("shutdown task");
        self.record(format!(
            "graceful shutdown, ready before: {was_ready}, clean: {clean}"
        ));
        let faulted = checker::lock(&self.checker).faulted_since(shutdown_ms);
        if was_ready && !clean && !faulted {
            return Err(Failure::new(
                "graceful-shutdown",
                "a ready engine did not shut down cleanly within its shutdown timeout".to_string(),
                None,
                &self.trace,
            ));
        }
        Ok(clean)
    }

    /// A graceful shutdown killed midway: at `shutdown.after_drain` if the
    /// restart arms it, else after its (short) delay.
    async fn interrupted_graceful(&mut self, restart: &Restart) {
        let stack = self.running_stack();
        checker::lock(&self.checker).shutdown_started();
        let armed = restart.crash_point.clone().map(|(name, nth)| {
            let point: CrashPoint = name
                .parse()
                .unwrap_or_else(|e| panic!("scenario names a crash point: {e}"));
            self.crash.arm(point, nth);
            checker::lock(&self.checker).coverage.point(point).armed += 1;
            point
        });
        let shutdown = self
            .engine
            .node
            .spawn(on_engine(async move { stack.shutdown().await }));
        drop(shutdown); // detached: the kill ends it
        if armed.is_some() {
            let window = restart.kill_delay_ms + 1_000;
            if !self.crash.wait_fired(window).await {
                self.record("the armed crash point was not reached: kill anyway".to_string());
            }
        } else {
            madsim::time::sleep(Duration::from_millis(restart.kill_delay_ms)).await;
        }
        self.kill_now(RestartKind::InterruptedGraceful, restart.power_seed);
        self.boot_kill(restart).await;
    }

    fn running_stack(&self) -> engine::stack::Stack {
        self.engine
            .stack
            .lock()
            .expect("stack slot")
            .clone()
            .expect("engine running")
    }
}
