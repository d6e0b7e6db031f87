//! A circuit breaker for one connector endpoint, in this replica's memory:
//! after `FAILURES_TO_OPEN` calls in a row fail on the way (refused, reset,
//! past their deadline), calls fail at once for `OPEN_FOR`; then one call
//! at a time is let through until one gets an answer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed calls in a row that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 5;
/// How long an open breaker refuses calls before it tries one.
pub const OPEN_FOR: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    /// Set while open: calls are refused until then.
    open_until: Option<Instant>,
    /// A trial call is out after the pause.
    probing: bool,
}

impl Breaker {
    /// Whether a call may be sent now.
    pub fn allows(&self) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        match state.open_until {
            None => true,
            Some(until) if Instant::now() < until => false,
            Some(_) if state.probing => false,
            Some(_) => {
                state.probing = true;
                true
            }
        }
    }

    pub fn succeeded(&self) {
        *self.state.lock().expect("breaker lock") = State::default();
    }

    pub fn failed(&self) {
        let mut state = self.state.lock().expect("breaker lock");
        state.failures += 1;
        state.probing = false;
        if state.failures >= FAILURES_TO_OPEN {
            state.open_until = Some(Instant::now() + OPEN_FOR);
        }
    }

    /// Whether calls are being refused now (for metrics).
    pub fn is_open(&self) -> bool {
        let state = self.state.lock().expect("breaker lock");
        state.open_until.is_some_and(|until| Instant::now() < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_an_answer_closes_it() {
        let breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            assert!(breaker.allows());
            breaker.failed();
        }
        breaker.succeeded();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            breaker.failed();
        }
        assert!(breaker.allows(), "failures not in a row do not open it");
        breaker.failed();
        assert!(!breaker.allows(), "open after {FAILURES_TO_OPEN} in a row");
        assert!(breaker.is_open());

        // After the pause one trial call goes out, and only one.
        breaker.state.lock().unwrap().open_until = Some(Instant::now());
        assert!(breaker.allows());
        assert!(!breaker.allows(), "a second call waits for the trial");
        breaker.succeeded();
        assert!(breaker.allows() && breaker.allows());
    }

    #[test]
    fn a_failed_trial_opens_it_again() {
        let breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN {
            breaker.failed();
        }
        breaker.state.lock().unwrap().open_until = Some(Instant::now());
        assert!(breaker.allows());
        breaker.failed();
        assert!(!breaker.allows());
    }
}
