//! A clock that moves only when told to: for unit tests that run engine code
//! without a runtime.

use super::Clock;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

#[derive(Clone, Default)]
pub struct ManualClock {
    state: Arc<Mutex<ClockState>>,
}

#[derive(Default)]
struct ClockState {
    now_ms: u64,
    next_timer: u64,
    /// (deadline, id) -> waker of a pending sleep.
    timers: BTreeMap<(u64, u64), Waker>,
}

impl ManualClock {
    pub fn new(now_ms: u64) -> ManualClock {
        let clock = ManualClock::default();
        clock.state.lock().expect("clock").now_ms = now_ms;
        clock
    }

    /// Moves time forward and wakes every sleep that is now due.
    pub fn advance_ms(&self, delta_ms: u64) {
        let due: Vec<Waker> = {
            let mut state = self.state.lock().expect("clock");
            state.now_ms += delta_ms;
            let first_not_due = (state.now_ms + 1, 0);
            let later = state.timers.split_off(&first_not_due);
            std::mem::replace(&mut state.timers, later)
                .into_values()
                .collect()
        };
        due.into_iter().for_each(Waker::wake);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.state.lock().expect("clock").now_ms
    }

    fn sleep_ms(&self, duration_ms: u64) -> BoxFuture<'static, ()> {
        let mut state = self.state.lock().expect("clock");
        let deadline_ms = state.now_ms + duration_ms;
        state.next_timer += 1;
        let id = state.next_timer;
        Box::pin(Sleep {
            state: self.state.clone(),
            deadline_ms,
            id,
        })
    }
}

struct Sleep {
    state: Arc<Mutex<ClockState>>,
    deadline_ms: u64,
    id: u64,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.lock().expect("clock");
        if state.now_ms >= self.deadline_ms {
            return Poll::Ready(());
        }
        state
            .timers
            .insert((self.deadline_ms, self.id), cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        // Only housekeeping: a dropped sleep must not keep a stale waker.
        if let Ok(mut state) = self.state.lock() {
            state.timers.remove(&(self.deadline_ms, self.id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn sleeps_complete_when_time_reaches_their_deadline() {
        let clock = ManualClock::new(100);
        let mut sleep = clock.sleep_ms(50);
        assert!((&mut sleep).now_or_never().is_none());
        clock.advance_ms(49);
        assert!((&mut sleep).now_or_never().is_none());
        clock.advance_ms(1);
        assert_eq!(clock.now_ms(), 150);
        assert!(sleep.now_or_never().is_some());
    }
}
