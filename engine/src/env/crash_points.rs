//! Named crash points: the places where a kill is most interesting. The engine
//! awaits [`CrashPoints::reached`] at each; a host that wants the process to die
//! exactly there returns a future that never completes and then drops the
//! engine's tasks, which is precisely what a kill at that await point does.

use futures::future::{self, BoxFuture, FutureExt};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

macro_rules! crash_points {
    ($($variant:ident => $name:literal: $doc:literal,)*) => {
        /// Where the engine offers the host a kill.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum CrashPoint {
            $(#[doc = $doc] $variant,)*
        }

        impl CrashPoint {
            pub const ALL: &'static [CrashPoint] = &[$(CrashPoint::$variant,)*];

            /// The stable name used by scenarios and the command line.
            pub fn name(self) -> &'static str {
                match self { $(CrashPoint::$variant => $name,)* }
            }
        }
    };
}

crash_points! {
    LogFlushAfterWrite => "log.flush.after_write":
        "A shape-log flush has written its data but not synced it.",
    LogFlushAfterSync => "log.flush.after_sync":
        "A shape-log flush has synced its data but not recorded the durable offset.",
    MetaAfterTempWrite => "meta.after_temp_write":
        "Shape metadata: the temporary file is written and synced, not yet renamed.",
    MetaAfterRename => "meta.after_rename":
        "Shape metadata: renamed over the old file, directory not yet synced.",
    StateAfterTempWrite => "state.after_temp_write":
        "A subquery shape's metadata with its views: the temporary file is synced, not yet renamed.",
    MoveInSplice => "move_in.splice":
        "A move-in's event and rows are appended; the transactions after its boundary are not.",
    SnapshotAfterChunk => "snapshot.after_chunk":
        "A snapshot chunk is closed and synced; the snapshot is not complete.",
    SnapshotBeforeComplete => "snapshot.before_complete":
        "Every snapshot chunk is durable; completion is not yet recorded.",
    MetadataFlush => "metadata.flush":
        "Before a batch of buffered shape metadata is committed to SQLite.",
    ShutdownAfterDrain => "shutdown.after_drain":
        "Graceful shutdown: every shape flushed, metadata not yet flushed, no marker.",
    CreateBeforeMeta => "log.create.before_meta":
        "Shape creation: the directory tree is durable, the log metadata not yet written.",
    RemoveAfterMeta => "log.remove.after_meta":
        "Shape removal: the log metadata is durably gone, the rest of the files not yet.",
    OpenAfterTrim => "log.open.after_trim":
        "Recovery: a log was trimmed to its durable offset, its shape not yet restored.",
    BootBeforeReplication => "boot.before_replication":
        "Boot: shapes restored and orphans removed, replication not yet started.",
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CrashPoint {
    type Err = String;
    fn from_str(s: &str) -> Result<CrashPoint, String> {
        CrashPoint::ALL
            .iter()
            .copied()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = CrashPoint::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "unknown crash point {s:?}; known points: {}",
                    names.join(", ")
                )
            })
    }
}

pub trait CrashPoints: Send + Sync + 'static {
    /// Called each time the engine reaches `point`. Returns at once unless the
    /// host wants the process to die here, in which case it never completes.
    fn reached(&self, point: CrashPoint) -> BoxFuture<'static, ()>;
}

/// Never interferes.
pub struct NoCrashPoints;

impl CrashPoints for NoCrashPoints {
    fn reached(&self, _point: CrashPoint) -> BoxFuture<'static, ()> {
        future::ready(()).boxed()
    }
}

/// Parks the engine forever at the `nth` (0-based) visit of an armed point.
/// Tests poll the engine's future, see it pending, and drop it: a kill there.
#[derive(Clone, Default)]
pub struct ArmedCrashPoints {
    state: Arc<Mutex<ArmedState>>,
}

#[derive(Default)]
struct ArmedState {
    armed: Option<(CrashPoint, u32)>,
    fired: Option<CrashPoint>,
}

impl ArmedCrashPoints {
    pub fn arm(&self, point: CrashPoint, nth: u32) {
        let mut state = self.state.lock().expect("crash point state");
        state.armed = Some((point, nth));
        state.fired = None;
    }

    pub fn disarm(&self) {
        self.state.lock().expect("crash point state").armed = None;
    }

    /// The point where the engine was parked, if it was.
    pub fn fired(&self) -> Option<CrashPoint> {
        self.state.lock().expect("crash point state").fired
    }
}

impl CrashPoints for ArmedCrashPoints {
    fn reached(&self, point: CrashPoint) -> BoxFuture<'static, ()> {
        let mut state = self.state.lock().expect("crash point state");
        match state.armed {
            Some((armed, 0)) if armed == point => {
                state.armed = None;
                state.fired = Some(point);
                future::pending().boxed()
            }
            Some((armed, ref mut nth)) if armed == point => {
                *nth -= 1;
                future::ready(()).boxed()
            }
            _ => future::ready(()).boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn names_roundtrip_and_unknown_names_list_the_known_ones() {
        for &p in CrashPoint::ALL {
            assert_eq!(p.name().parse::<CrashPoint>(), Ok(p));
        }
        let err = "log.flush.nowhere".parse::<CrashPoint>().unwrap_err();
        assert!(err.contains("log.flush.after_sync"), "{err}");
    }

    #[test]
    fn armed_point_parks_on_its_nth_visit_only() {
        let points = ArmedCrashPoints::default();
        points.arm(CrashPoint::LogFlushAfterSync, 1);
        assert!(
            points
                .reached(CrashPoint::LogFlushAfterWrite)
                .now_or_never()
                .is_some()
        );
        assert!(
            points
                .reached(CrashPoint::LogFlushAfterSync)
                .now_or_never()
                .is_some()
        );
        assert_eq!(points.fired(), None);
        assert!(
            points
                .reached(CrashPoint::LogFlushAfterSync)
                .now_or_never()
                .is_none()
        );
        assert_eq!(points.fired(), Some(CrashPoint::LogFlushAfterSync));
        // Fires once.
        assert!(
            points
                .reached(CrashPoint::LogFlushAfterSync)
                .now_or_never()
                .is_some()
        );
    }
}
