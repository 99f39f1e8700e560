//! Restarts of the engine, by kind:
//!
//! - `crash`: the node's tasks are dropped wherever they are (at the armed
//!   crash point, or after the drawn delay); the disk keeps what was written;
//! - `power`: a crash, then a power loss (`MemStorage::power_loss`, torn
//!   from the restart's seed);
//! - `graceful`: the shutdown coordinator runs to its end, then the node is
//!   killed; a ready engine must stop cleanly;
//! - `interrupted-graceful`: the coordinator starts and the node is killed
//!   midway (at `shutdown.after_drain`, or after a few milliseconds).
//!
//! Any kill may be followed by a second one while the restarted engine
//! boots (at a boot-time crash point): recovery itself must be restartable.

use super::checker;
use super::checks::Failure;
use super::panics::on_engine;
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
        }
        Ok(())
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
        let handle = Handle::current();
        handle.kill(self.engine.id());
        *self.stack.lock().expect("stack slot") = None;
        let fired = self.crash.fired();
        self.crash.disarm();
        let mut checker = checker::lock(&self.checker);
        if let Some(point) = fired {
            checker.coverage.point(point).fired += 1;
        }
        checker.killed(true);
        if kind == RestartKind::Power {
            let report = self
                .storage
                .power_loss(PowerLoss::Torn { seed: power_seed });
            checker.coverage.power_loss(&report);
            drop(checker);
            self.record(format!("power loss: {report:?}"));
        } else {
            drop(checker);
        }
        self.record(format!("{} kill of the engine", kind.name()));
        handle.restart(self.engine.id());
        self.engine = handle.get_node(self.engine.id()).expect("engine node");
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

    /// Shuts the engine down through its coordinator and restarts it. An
    /// engine that was ready must stop cleanly (everything flushed, marker
    /// written) within its shutdown timeout, unless a fault during the drain
    /// explains it (an injected I/O error failed a shape; Postgres was cut
    /// off while a snapshot had to finish).
    async fn graceful_restart(&mut self) -> Result<(), Failure> {
        let stack = self.running_stack();
        let shutdown_ms = crate::host::now_ms();
        checker::lock(&self.checker).shutdown_started();
        let (was_ready, clean) = self
            .engine
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
        let handle = Handle::current();
        handle.kill(self.engine.id());
        *self.stack.lock().expect("stack slot") = None;
        let mut checker = checker::lock(&self.checker);
        checker.killed(!clean);
        checker.coverage.restart(RestartKind::Graceful);
        drop(checker);
        handle.restart(self.engine.id());
        self.engine = handle.get_node(self.engine.id()).expect("engine node");
        Ok(())
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
        self.stack
            .lock()
            .expect("stack slot")
            .clone()
            .expect("engine running")
    }
}
