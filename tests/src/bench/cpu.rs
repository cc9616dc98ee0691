//! Kernel CPU time around a measurement, the bench's CPU-normalised figures (Cilium's
//! metric): µs of kernel CPU per connection or per transaction, s per GB streamed.
//!
//! `/proc/stat`'s first line is the whole machine's: system + irq + softirq, in USER_HZ
//! ticks. On this kernel they are tick-sampled (CONFIG_TICK_CPU_ACCOUNTING=y, no
//! CONFIG_IRQ_TIME_ACCOUNTING, HZ=250), so a 2 s measurement on 2 CPUs holds ~400 ticks,
//! and ±1 tick is 0.25 %. It is machine-wide: another tenant's kernel work on a shared VM
//! lands in it too, which is why the load average is printed with each round. It can
//! also undercount: with CONFIG_NO_HZ_IDLE the tick stops while a CPU idles, so the work
//! of a short wake-up (one request/response, at ~10 k a second) may see no tick at all.
//!
//! The cross-check that leaves other tenants out ([`own_seconds`]): the bench process's
//! own CPU time, CLOCK_PROCESS_CPUTIME_ID (the scheduler's precise runtime of all its
//! threads, exited ones included). It holds the load and server threads' syscalls and
//! most of the network stack's work: veth queues a packet on the transmitting CPU's
//! backlog, which that thread's local_bh_enable() then processes in its context, and
//! without CONFIG_IRQ_TIME_ACCOUNTING softirq time counts as the interrupted task's
//! runtime. Softirq run from the idle task or ksoftirqd is left out; the threads' user
//! time, the same in every mode, is in. (Not getrusage()'s stime: that splits the
//! runtime by the ticks' ratio over the process's whole life, clamped to stay monotonic
//! (cputime_adjust()), so its growth over a few seconds can read as 0.)

/// The kernel's share of the machine's CPU time so far, in USER_HZ ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelCpu {
    system: u64,
    irq: u64,
    softirq: u64,
    /// This process's CPU time (all its threads, CLOCK_PROCESS_CPUTIME_ID), in seconds.
    own_s: f64,
}

/// `/proc/stat`'s "cpu  user nice system idle iowait irq softirq …" (fields 3, 6, 7),
/// and this process's system time.
pub fn kernel_cpu() -> KernelCpu {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let own = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map_or(f64::NAN, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9);
    KernelCpu {
        own_s: own,
        ..parse_stat(&stat)
    }
}

fn parse_stat(stat: &str) -> KernelCpu {
    let f: Vec<u64> = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    KernelCpu {
        system: at(2),
        irq: at(5),
        softirq: at(6),
        own_s: 0.0,
    }
}

/// Kernel CPU seconds from `a` to `b`.
pub fn seconds(a: &KernelCpu, b: &KernelCpu) -> f64 {
    let ticks = |k: &KernelCpu| k.system + k.irq + k.softirq;
    ticks(b).saturating_sub(ticks(a)) as f64 / clock_ticks()
}

/// This process's CPU time from `a` to `b`, in seconds.
pub fn own_seconds(a: &KernelCpu, b: &KernelCpu) -> f64 {
    b.own_s - a.own_s
}

/// USER_HZ (sysconf(_SC_CLK_TCK)): 100 on Linux whatever HZ is.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The load average above which a round's CPU figures carry other work too.
pub const LOAD_WARNING: f64 = 0.5;

/// The CPU time (user + system) process `pid` has used, in seconds: fields 14 and 15 of
/// `/proc/<pid>/stat`, after the command name in parentheses (which may hold spaces).
pub fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// This thread's CPU time (user + system), in seconds (CLOCK_THREAD_CPUTIME_ID).
pub fn thread_cpu_s() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(f64::NAN, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_time_is_system_irq_and_softirq() {
        let a = parse_stat("cpu  10 1 200 5000 3 40 60 0 0 0\ncpu0 1 1 1 1 1 1 1 0 0 0\n");
        let b = parse_stat("cpu  90 1 300 9000 3 50 90 0 0 0\n");
        assert_eq!((a.system, a.irq, a.softirq), (200, 40, 60));
        let hz = clock_ticks();
        assert!((seconds(&a, &b) - 140.0 / hz).abs() < 1e-9);
        assert_eq!(seconds(&b, &a), 0.0, "never negative");
    }
}
