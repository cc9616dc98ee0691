//! `netplane monitor`: the data plane's drop and flow events, one line each, as
//! `cilium monitor` prints them; and, with `--log`, the programs' aya-log output.
//!
//! The programs write events only while a monitor asks for them (a flag in their config
//! map, see [`crate::dataplane::ebpf::monitor`]): the monitor sets it as it starts, sets it
//! again every second (an `up` may rewrite the config), and clears it as it ends: on
//! SIGINT, SIGTERM or SIGHUP, or when its stdout closes. One that is killed leaves it set,
//! and the agent clears it. `format` writes the lines, `clock` their time, `log` is
//! `--log`.

mod clock;
mod format;
mod log;

use std::collections::HashMap;
use std::ffi::CStr;
use std::io::{self, BufWriter, Write};
use std::time::Duration;

use anyhow::{Context as _, bail};
use netplane_common::observe::{Event, event_kind, monitor};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::config::Mode;
use crate::dataplane::ebpf::monitor as kernel;
use crate::state::State;

/// Which events to show, and how.
#[derive(Clone, Debug, Default)]
pub struct MonitorOptions {
    /// [`netplane_common::observe::monitor`] bits.
    pub mask: u32,
    /// One JSON object per line instead of text.
    pub json: bool,
    /// The programs' debug logs (`up --debug-datapath`) instead of events.
    pub log: bool,
}

/// How often the flag is set again and the lost events counted.
const TICK: Duration = Duration::from_secs(1);

/// Events printed per wakeup at most, before the other branches get a turn.
const BATCH: usize = 4096;

/// Streams instance `name`'s events to stdout until interrupted.
pub fn run(name: &str, opts: MonitorOptions) -> anyhow::Result<()> {
    let state = State::load(name)?;
    let Some(plan) = state.and_then(|s| s.plan) else {
        bail!("instance {name} is not up: `netplane monitor` watches a running instance");
    };
    if plan.mode != Mode::Ebpf {
        bail!(
            "instance {name} runs the {} data plane: `netplane monitor` needs mode \"ebpf\" (its programs write the events)",
            plan.mode
        );
    }
    let mask = if opts.mask == 0 {
        monitor::ALL
    } else {
        opts.mask
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("monitor: tokio runtime")?
        .block_on(async {
            // Before the flag is set: a signal must find the handler that clears it.
            let signals = Signals::new()?;
            if opts.log {
                log::run(name, signals).await
            } else {
                events(name, mask, opts.json, signals).await
            }
        })
}

/// SIGINT, SIGTERM and SIGHUP: each ends the monitor cleanly.
struct Signals([Signal; 3]);

impl Signals {
    fn new() -> io::Result<Signals> {
        Ok(Signals([
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ]))
    }

    /// Waits for the first of them.
    async fn next(&mut self) {
        let [a, b, c] = &mut self.0;
        tokio::select! {
            _ = a.recv() => {}
            _ = b.recv() => {}
            _ = c.recv() => {}
        }
    }
}

/// The event stream of instance `name`: `mask`'s events, as text or JSON lines.
async fn events(name: &str, mask: u32, json: bool, mut signals: Signals) -> anyhow::Result<()> {
    let ring = kernel::events(name)?;
    let lease = kernel::Lease::take(name, mask)?;
    let lost_at_start = kernel::events_lost(name).unwrap_or(0);
    // SAFETY: the ring buffer owns its map fd, open and the same until the AsyncFd drops it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(io::Error::from)
        .with_context(|| format!("instance {name}: poll the event ring buffer"))?;
    let mut out = Printer {
        out: BufWriter::new(io::stdout()),
        json,
        mask,
        clock: clock::Clock::now(),
        names: HashMap::new(),
    };
    eprintln!(
        "monitoring instance {name}: {} events (Ctrl-C to stop)",
        match mask {
            monitor::DROP => "drop",
            monitor::FLOW => "flow",
            _ => "drop and flow",
        }
    );
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = lost_at_start;
    let written: io::Result<()> = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                let mut res = Ok(());
                let mut budget = BATCH;
                while budget > 0 && let Some(item) = rb.next() {
                    budget -= 1;
                    if let (Some(ev), Ok(())) = (read_event(&item), &res) {
                        res = out.event(&ev);
                    }
                }
                // Drained: wait for the kernel's next wakeup. Not drained (a flood): stay
                // ready, so that the tick and the signals get their turn in between.
                if budget > 0 {
                    guard.clear_ready();
                }
                if let Err(e) = res.and_then(|()| out.out.flush()) {
                    break Err(e);
                }
            }
            _ = tick.tick() => {
                lease.assert()?;
                if let Some(n) = kernel::events_lost(name).filter(|n| *n > reported) {
                    let r = out.lost(n - reported, n - lost_at_start);
                    reported = n;
                    if let Err(e) = r.and_then(|()| out.out.flush()) {
                        break Err(e);
                    }
                }
            }
            () = signals.next() => break Ok(()),
        }
    };
    // The lease clears the flag as it drops, whatever ended the loop.
    drop(lease);
    match written {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(e).context("monitor: write to stdout")
        }
        _ => Ok(()),
    }
}

/// One record of the ring buffer as an [`Event`]; `None` for a short one.
fn read_event(item: &[u8]) -> Option<Event> {
    Some(bytemuck::pod_read_unaligned(
        item.get(..size_of::<Event>())?,
    ))
}

/// Writes events as lines.
struct Printer {
    out: BufWriter<io::Stdout>,
    json: bool,
    mask: u32,
    clock: clock::Clock,
    /// Interface names by index: an index is not reused while the namespace lives.
    names: HashMap<u32, Option<String>>,
}

impl Printer {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        let bit = if ev.kind == event_kind::DROP {
            monitor::DROP
        } else {
            monitor::FLOW
        };
        if self.mask & bit == 0 {
            return Ok(());
        }
        let unix_ns = self.clock.unix_ns(ev.ts_ns);
        let ifname = self
            .names
            .entry(ev.ifindex)
            .or_insert_with(|| ifname(ev.ifindex))
            .as_deref();
        let time_of_day = clock::time_of_day(unix_ns);
        let cx = format::Context {
            unix_ns,
            ifname,
            time_of_day: &time_of_day,
        };
        if self.json {
            writeln!(self.out, "{}", format::json(ev, &cx))
        } else {
            writeln!(self.out, "{}", format::line(ev, &cx))
        }
    }

    fn lost(&mut self, lost: u64, total: u64) -> io::Result<()> {
        let now = clock::unix_now_ns();
        if self.json {
            writeln!(self.out, "{}", format::lost_json(now, lost, total))
        } else {
            writeln!(
                self.out,
                "{}",
                format::lost_line(&clock::time_of_day(now), lost, total)
            )
        }
    }
}

/// The name of interface `index` in this network namespace (the instance's: the monitor
/// runs where netplane runs).
fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes, NUL included, into buf.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_read_as_an_event_and_a_short_one_is_not() {
        let ev = Event {
            ifindex: 7,
            kind: event_kind::DROP,
            ..Event::default()
        };
        // SAFETY: Event is plain data without padding.
        let bytes = unsafe {
            std::slice::from_raw_parts((&ev as *const Event).cast::<u8>(), size_of::<Event>())
        };
        let mut record = bytes.to_vec();
        record.extend([0; 4]); // a record may be longer (8-byte alignment)
        assert_eq!(read_event(&record[..size_of::<Event>()]), Some(ev));
        assert_eq!(read_event(&record[..10]), None);
    }
}
