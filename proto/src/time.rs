//! Virtual time for the core.
//!
//! The core never reads a clock. Every input carries a [`Time`]: microseconds since an epoch
//! that the driver chooses. Being a plain integer makes runs reproducible and lets the
//! simulator jump ahead freely.
//!
//! What the drivers feed it:
//! - The agent (`chaosnet-agent`'s `driver::Clock`) reads the wall clock once at start-up and
//!   then advances it with the monotonic clock: a `Time` is microseconds since the Unix
//!   epoch, but it never goes backwards when the wall clock is stepped. The epoch matters
//!   in two places: the `last_seen` of contacts persisted before a restart stay comparable
//!   with the new process's times, and a signal's `issued_ms` (milliseconds of the
//!   requester's `Time`) is compared with the target's own clock against
//!   `signal_max_age_ms`, so agents whose wall clocks disagree by more than that refuse each
//!   other's signals as stale.
//! - The simulator (`chaosnet-sim`) starts every world at [`Time::ZERO`] and moves one clock
//!   for all its nodes from event to event, so nodes never disagree.

use std::ops::{Add, Sub};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time, in microseconds since the driver's epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time(pub u64);

impl Time {
    /// The epoch.
    pub const ZERO: Time = Time(0);

    /// From milliseconds since the epoch.
    pub fn from_millis(ms: u64) -> Time {
        Time(ms.saturating_mul(1000))
    }

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> u64 {
        self.0 / 1000
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_sub(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }
}
