//! `netplane monitor --log`: the programs' aya-log records (`up --debug-datapath`), one
//! line each, `TIME LEVEL message`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use aya_log::EbpfLogger;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{Signals, clock};
use crate::dataplane::ebpf::monitor as kernel;

/// aya-log's sink: prints each record on stdout. A closed stdout (the reader went away)
/// is remembered in [`BROKEN`], for the loop to stop (the logger keeps its sink private).
struct Printer;

static BROKEN: AtomicBool = AtomicBool::new(false);

impl log::Log for Printer {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let line = format!(
            "{} {:<5} {}\n",
            clock::time_of_day(clock::unix_now_ns()),
            record.level(),
            record.args()
        );
        let mut out = std::io::stdout().lock();
        if out
            .write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            BROKEN.store(true, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

/// Prints instance `name`'s debug logs until a signal, or until stdout closes.
pub(super) async fn run(name: &str, mut signals: Signals) -> anyhow::Result<()> {
    let Some(id) = kernel::log_program_id(name) else {
        anyhow::bail!(
            "instance {name}: the programs run without debug logs: netplane up --debug-datapath"
        );
    };
    let logger = EbpfLogger::init_from_id_with_logger(id, Printer)
        .map_err(|e| anyhow::anyhow!("instance {name}: aya-log of program {id}: {e}"))?;
    // SAFETY: the logger owns its ring buffer's map fd, open and the same until the
    // AsyncFd drops it.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    eprintln!("monitoring instance {name}: the programs' debug logs (Ctrl-C to stop)");
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            () = signals.next() => return Ok(()),
        }
        if BROKEN.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}
