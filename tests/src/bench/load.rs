//! The benchmark's load generator and its server, in plain blocking sockets on threads
//! that joined the right network namespace and are pinned to their own CPU.
//!
//! One TCP server handles three kinds of connection, told apart by the first byte:
//! `S` stream (read until EOF), `R` request/response (echo one byte per byte), `C`
//! connect/request/close (one byte back, then close). A UDP server echoes datagrams.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

use crate::Netns;

const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `f` on a new thread inside namespace `ns`, pinned to `cpu`.
pub(super) fn spawn_in<R: Send + 'static>(
    ns: &Netns,
    cpu: usize,
    f: impl FnOnce() -> R + Send + 'static,
) -> JoinHandle<R> {
    ns.spawn_thread(move || {
        let mut set = CpuSet::new();
        if set.set(cpu).is_ok() {
            let _ = sched_setaffinity(Pid::from_raw(0), &set);
        }
        f()
    })
}

fn set_timeout(fd: &impl AsRawFd, t: Duration) {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as i64,
        tv_usec: t.subsec_micros() as i64,
    };
    // SAFETY: setsockopt reads a timeval from our stack.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
}

/// Close with RST: a connect/close loop must not pile up TIME_WAIT sockets and exhaust
/// the client's ports (SO_LINGER with a zero timeout).
fn close_hard(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a linger from our stack.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

/// The servers of one namespace; stopped on drop.
pub(super) struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// TCP and UDP servers on `ip`:`port` in namespace `ns`, on `cpu`.
    pub(super) fn start(ns: &Netns, ip: IpAddr, port: u16, cpu: usize) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let addr = SocketAddr::new(ip, port);
        let (s1, r1) = (stop.clone(), ready_tx.clone());
        let tcp = spawn_in(ns, cpu, move || tcp_server(addr, &s1, r1));
        let (s2, r2) = (stop.clone(), ready_tx);
        let udp = spawn_in(ns, cpu, move || udp_server(addr, &s2, r2));
        for _ in 0..2 {
            ready_rx
                .recv_timeout(IO_TIMEOUT)
                .expect("bench server starts");
        }
        Servers {
            stop,
            threads: vec![tcp, udp],
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn tcp_server(addr: SocketAddr, stop: &AtomicBool, ready: std::sync::mpsc::Sender<()>) {
    let l = TcpListener::bind(addr).expect("bench TCP server binds");
    // accept() honours SO_RCVTIMEO: the loop wakes up to see the stop flag.
    set_timeout(&l, Duration::from_millis(200));
    let _ = ready.send(());
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut s, _)) = l.accept() else { continue };
        s.set_read_timeout(Some(IO_TIMEOUT)).ok();
        let _ = s.set_nodelay(true);
        let mut op = [0u8; 1];
        if s.read_exact(&mut op).is_err() {
            continue;
        }
        match op[0] {
            b'C' => {
                let _ = s.write_all(b"c");
            }
            b'R' => {
                std::thread::spawn(move || {
                    let mut b = [0u8; 1];
                    while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
                });
            }
            b'S' => {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    let mut total: u64 = 0;
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    let _ = s.write_all(&total.to_be_bytes());
                });
            }
            _ => {}
        }
    }
}

fn udp_server(addr: SocketAddr, stop: &AtomicBool, ready: std::sync::mpsc::Sender<()>) {
    let s = UdpSocket::bind(addr).expect("bench UDP server binds");
    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let _ = ready.send(());
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], peer);
        }
    }
}

/// A rate with latency percentiles.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Rate {
    pub per_s: f64,
    /// How many connections or transactions the rate counts.
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

fn rate(mut lat_ns: Vec<u32>, elapsed: Duration, errors: u64) -> Rate {
    lat_ns.sort_unstable();
    let pct = |q: f64| {
        lat_ns
            .get(((lat_ns.len() as f64 * q) as usize).min(lat_ns.len().saturating_sub(1)))
            .map_or(0.0, |v| f64::from(*v) / 1000.0)
    };
    Rate {
        per_s: lat_ns.len() as f64 / elapsed.as_secs_f64(),
        count: lat_ns.len() as u64,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}

/// Consecutive connections a stream measurement is made of. On veth with the two ends
/// pinned to different CPUs, one connection's rate is bimodal (12–20 or 25–31 Gbit/s on
/// the reference VM, in every mode): a TCP sender whose ACKs are processed on the
/// receiver's CPU transmits from both CPUs, veth queues each packet on its transmitting
/// CPU's backlog, and how often segments overtake each other (and are retransmitted
/// spuriously) differs from one connection to the next. Summing several connections
/// measures the mix instead of one draw from it.
const STREAM_CONNECTIONS: u32 = 4;

/// TCP bulk throughput to `target` over `secs`, in Gbit/s: the bytes the server received
/// over [`STREAM_CONNECTIONS`] consecutive connections, divided by their total time.
pub(super) fn stream(target: SocketAddr, secs: Duration) -> f64 {
    let each = secs / STREAM_CONNECTIONS;
    let (mut bytes, mut time) = (0u64, Duration::ZERO);
    for _ in 0..STREAM_CONNECTIONS {
        let Some((b, t)) = one_stream(target, each) else {
            return 0.0;
        };
        bytes += b;
        time += t;
    }
    bytes as f64 * 8.0 / time.as_secs_f64() / 1e9
}

/// One connection's bulk transfer: bytes the server received, and how long it took.
fn one_stream(target: SocketAddr, secs: Duration) -> Option<(u64, Duration)> {
    let mut s = TcpStream::connect_timeout(&target, IO_TIMEOUT).ok()?;
    s.set_read_timeout(Some(IO_TIMEOUT + secs)).ok();
    let buf = vec![0x5au8; 1 << 16];
    let start = Instant::now();
    s.write_all(b"S").ok()?;
    while start.elapsed() < secs {
        s.write_all(&buf).ok()?;
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut total = [0u8; 8];
    s.read_exact(&mut total).ok()?;
    Some((u64::from_be_bytes(total), start.elapsed()))
}

/// Request/response on one persistent TCP connection.
pub(super) fn tcp_rr(target: SocketAddr, secs: Duration) -> Rate {
    let Ok(mut s) = TcpStream::connect_timeout(&target, IO_TIMEOUT) else {
        return Rate {
            errors: 1,
            ..Rate::default()
        };
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
    let _ = s.set_nodelay(true);
    let mut lat = Vec::with_capacity(1 << 16);
    let mut b = [0u8; 1];
    let start = Instant::now();
    if s.write_all(b"R").is_err() {
        return Rate {
            errors: 1,
            ..Rate::default()
        };
    }
    while start.elapsed() < secs {
        let t = Instant::now();
        if s.write_all(b"x").is_err() || s.read_exact(&mut b).is_err() {
            return rate(lat, start.elapsed(), 1);
        }
        lat.push(t.elapsed().as_nanos() as u32);
    }
    rate(lat, start.elapsed(), 0)
}

/// Connect, one request and response, close: what NAT costs most, once per connection.
pub(super) fn tcp_crr(target: SocketAddr, secs: Duration) -> Rate {
    let mut lat = Vec::with_capacity(1 << 16);
    let mut errors = 0;
    let mut b = [0u8; 1];
    let start = Instant::now();
    while start.elapsed() < secs {
        let t = Instant::now();
        let ok = TcpStream::connect_timeout(&target, IO_TIMEOUT).is_ok_and(|mut s| {
            s.set_read_timeout(Some(IO_TIMEOUT)).ok();
            let _ = s.set_nodelay(true);
            let ok = s.write_all(b"C").is_ok() && s.read_exact(&mut b).is_ok();
            close_hard(&s);
            ok
        });
        if ok {
            lat.push(t.elapsed().as_nanos() as u32);
        } else {
            errors += 1;
        }
    }
    rate(lat, start.elapsed(), errors)
}

/// Request/response over UDP, one datagram each way.
pub(super) fn udp_rr(target: SocketAddr, secs: Duration) -> Rate {
    let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
        return Rate {
            errors: 1,
            ..Rate::default()
        };
    };
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    let mut lat = Vec::with_capacity(1 << 16);
    let mut errors = 0;
    let mut b = [0u8; 64];
    let start = Instant::now();
    while start.elapsed() < secs {
        let t = Instant::now();
        if s.send_to(b"x", target).is_ok() && s.recv_from(&mut b).is_ok() {
            lat.push(t.elapsed().as_nanos() as u32);
        } else {
            errors += 1;
        }
    }
    rate(lat, start.elapsed(), errors)
}
