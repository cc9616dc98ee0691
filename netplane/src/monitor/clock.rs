//! The events' time: the programs stamp them with `bpf_ktime_get_ns()`, CLOCK_MONOTONIC,
//! which the monitor offsets to the wall clock once, as it starts.

use std::time::{SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

/// Nanoseconds since the Unix epoch, now.
pub(super) fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// CLOCK_MONOTONIC in nanoseconds, as `bpf_ktime_get_ns()` reads it.
fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// The wall clock's lead over CLOCK_MONOTONIC, taken once.
pub(super) struct Clock {
    offset_ns: i128,
}

impl Clock {
    pub(super) fn now() -> Clock {
        let (mono, wall) = (monotonic_ns(), unix_now_ns());
        Clock {
            offset_ns: i128::from(wall) - i128::from(mono),
        }
    }

    /// The wall-clock time of a monotonic stamp.
    pub(super) fn unix_ns(&self, monotonic_ns: u64) -> u64 {
        (i128::from(monotonic_ns) + self.offset_ns).max(0) as u64
    }
}

/// `HH:MM:SS.uuuuuu` in local time.
pub(super) fn time_of_day(unix_ns: u64) -> String {
    let secs = (unix_ns / 1_000_000_000) as libc::time_t;
    let micros = (unix_ns % 1_000_000_000) / 1_000;
    // SAFETY: localtime_r writes into the tm we own, and reads only `secs`.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            return format!("{secs}.{micros:06}");
        }
        tm
    };
    format!(
        "{:02}:{:02}:{:02}.{micros:06}",
        tm.tm_hour, tm.tm_min, tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stamped_now_is_now_on_the_wall_clock() {
        let clock = Clock::now();
        let (mono, wall) = (monotonic_ns(), unix_now_ns());
        let d = clock.unix_ns(mono).abs_diff(wall);
        assert!(d < 50_000_000, "{d} ns apart");
        assert_eq!(time_of_day(1_500_000_123_456_789).len(), 15);
    }
}
