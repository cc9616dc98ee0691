//! The connection tester the end-to-end tests run inside namespaces (as netavark's tests
//! do). Each server answers `<message> from <peer ip>`, so a test sees both that the bytes
//! arrived and which source address the server saw.
//!
//! - `nptest serve-tcp ADDR:PORT [COUNT]`: answers COUNT (default 1) connections, one line
//!   each, then exits. Prints `listening` once bound.
//! - `nptest send-tcp ADDR:PORT MESSAGE [COUNT]`: COUNT (default 1) sequential connections,
//!   each checked; prints the last answer, or fails naming the first failed attempt.
//! - `nptest serve-udp ADDR:PORT [COUNT]`: answers COUNT datagrams with
//!   `<len> bytes from <peer ip>`.
//! - `nptest send-udp ADDR:PORT SIZE [SPORT]`: sends one datagram of SIZE bytes (from
//!   source port SPORT if given) and prints the answer.
//! - `nptest probe-udp ADDR:PORT`: sends one datagram on a connected socket and prints
//!   what came back: `answered`, `refused` (an ICMP port unreachable reached the socket)
//!   or `silence`.
//! - `nptest sink-tcp ADDR:PORT`: reads one connection to its end, then prints the bytes.
//! - `nptest bulk-tcp ADDR:PORT MIB`: writes MIB MiB on one connection, in 64 KiB writes.
//!   Both ends run on CPU 0 only: veth hands packets to netif_rx() on the CPU that sends
//!   them, and a segment sent from another CPU (by a moved sender, or by ACK processing
//!   on the receiver's CPU) lands on another backlog, which reorders a stream by itself.
//! - `nptest echo-tcp ADDR:PORT`: answers every line of one connection, until it closes.
//! - `nptest hold-tcp ADDR:PORT COUNT MILLIS`: one connection, COUNT lines MILLIS ms apart,
//!   each answer checked: a long-lived connection, to see it survive changes.
//! - `nptest capture IFACE MILLIS`: captures the IPv4 TCP/UDP frames that IFACE receives
//!   for MILLIS ms (AF_PACKET) and prints one line per frame with both checksums verified
//!   in software: `SRC:SPORT DST:DPORT PROTO ip=ok|BAD l4=ok|BAD|-`. Veth never checks
//!   checksums, so this is how the tests see what is really on the wire.
#![expect(
    unused_crate_dependencies,
    reason = "a binary sees every dependency of its package; the library target is where an unused one shows"
)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let count = |i: usize| {
        a.get(i)
            .map_or(Ok(1), |n| n.parse::<u32>().map_err(|e| format!("{n}: {e}")))
    };
    let res = match a.as_slice() {
        ["serve-tcp", addr, ..] => count(2).and_then(|n| serve_tcp(addr, n)),
        ["send-tcp", addr, msg, ..] => count(3).and_then(|n| send_tcp(addr, msg, n)),
        ["serve-udp", addr, ..] => count(2).and_then(|n| serve_udp(addr, n)),
        ["send-udp", addr, size, ..] => send_udp(addr, size, a.get(3).copied()),
        ["capture", iface, millis] => capture(iface, millis),
        ["echo-tcp", addr] => echo_tcp(addr),
        ["probe-udp", addr] => probe_udp(addr),
        ["sink-tcp", addr] => sink_tcp(addr),
        ["bulk-tcp", addr, mib] => bulk_tcp(addr, mib),
        ["hold-tcp", addr, count, millis] => hold_tcp(addr, count, millis),
        _ => Err("usage: see the header of tests/src/bin/nptest.rs".into()),
    };
    if let Err(e) = res {
        eprintln!("nptest: {e}");
        std::process::exit(1);
    }
}

fn addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("{s}: {e}"))
}

fn listening() {
    println!("listening");
    std::io::stdout().flush().ok();
}

fn serve_tcp(a: &str, count: u32) -> Result<(), String> {
    let l = TcpListener::bind(addr(a)?).map_err(|e| format!("bind {a}: {e}"))?;
    listening();
    for _ in 0..count {
        let (mut s, peer) = l.accept().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(TIMEOUT)).ok();
        let mut line = String::new();
        // A client that gave up mid-way must not stop the server: it just counts.
        if BufReader::new(&s).read_line(&mut line).is_ok() {
            let _ = writeln!(s, "{} from {}", line.trim_end(), peer.ip());
        }
    }
    Ok(())
}

fn send_tcp(a: &str, msg: &str, count: u32) -> Result<(), String> {
    let sa = addr(a)?;
    let mut last = String::new();
    for i in 1..=count {
        let attempt = || -> Result<String, String> {
            let mut s =
                TcpStream::connect_timeout(&sa, TIMEOUT).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(TIMEOUT)).ok();
            writeln!(s, "{msg}").map_err(|e| e.to_string())?;
            let mut answer = String::new();
            BufReader::new(&s)
                .read_line(&mut answer)
                .map_err(|e| e.to_string())?;
            if !answer.starts_with(msg) {
                return Err(format!("unexpected answer {answer:?}"));
            }
            Ok(answer)
        };
        last = attempt().map_err(|e| format!("{a}, connection {i} of {count}: {e}"))?;
    }
    print!("{last}");
    Ok(())
}

fn serve_udp(a: &str, count: u32) -> Result<(), String> {
    let s = UdpSocket::bind(addr(a)?).map_err(|e| format!("bind {a}: {e}"))?;
    listening();
    let mut buf = vec![0u8; 65536];
    for _ in 0..count {
        let (n, peer) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        let answer = format!("{n} bytes from {}", peer.ip());
        s.send_to(answer.as_bytes(), peer)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn send_udp(a: &str, size: &str, sport: Option<&str>) -> Result<(), String> {
    let size: usize = size.parse().map_err(|e| format!("{size}: {e}"))?;
    let bind = format!("0.0.0.0:{}", sport.unwrap_or("0"));
    let s = UdpSocket::bind(&bind).map_err(|e| format!("bind {bind}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT)).ok();
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    s.send_to(&payload, addr(a)?)
        .map_err(|e| format!("send to {a}: {e}"))?;
    let mut buf = [0u8; 1024];
    let (n, _) = s
        .recv_from(&mut buf)
        .map_err(|e| format!("no answer from {a}: {e}"))?;
    println!("{}", String::from_utf8_lossy(&buf[..n]));
    Ok(())
}

fn pin_to_cpu0() -> Result<(), String> {
    let mut cpu0 = nix::sched::CpuSet::new();
    cpu0.set(0).map_err(|e| e.to_string())?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu0)
        .map_err(|e| format!("pin to CPU 0: {e}"))
}

fn sink_tcp(a: &str) -> Result<(), String> {
    pin_to_cpu0()?;
    let l = TcpListener::bind(addr(a)?).map_err(|e| format!("bind {a}: {e}"))?;
    listening();
    let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TIMEOUT)).ok();
    let n = std::io::copy(&mut s, &mut std::io::sink()).map_err(|e| e.to_string())?;
    println!("{n}");
    Ok(())
}

fn bulk_tcp(a: &str, mib: &str) -> Result<(), String> {
    let mib: usize = mib.parse().map_err(|e| format!("{mib}: {e}"))?;
    pin_to_cpu0()?;
    let mut s =
        TcpStream::connect_timeout(&addr(a)?, TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    let buf = vec![0x5au8; 64 * 1024];
    for _ in 0..mib * 16 {
        s.write_all(&buf).map_err(|e| format!("write: {e}"))?;
    }
    Ok(())
}

fn probe_udp(a: &str) -> Result<(), String> {
    let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    s.connect(addr(a)?)
        .map_err(|e| format!("connect {a}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT)).ok();
    s.send(b"anyone?")
        .map_err(|e| format!("send to {a}: {e}"))?;
    let mut buf = [0u8; 64];
    let what = match s.recv(&mut buf) {
        Ok(_) => "answered",
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
        Err(_) => "silence",
    };
    println!("{what}");
    Ok(())
}

fn capture(iface: &str, millis: &str) -> Result<(), String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Instant;

    use netplane_common::packet::parse_ethernet;

    let millis: u64 = millis.parse().map_err(|e| format!("{millis}: {e}"))?;
    let name = std::ffi::CString::new(iface).map_err(|e| e.to_string())?;
    // SAFETY: plain libc calls on a socket we own; every pointer is to a live local.
    unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        if index == 0 {
            return Err(format!("no interface {iface}"));
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
        if fd < 0 {
            return Err(format!(
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        if libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            len,
        ) != 0
        {
            return Err(format!(
                "bind to {iface}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        let tv_len = std::mem::size_of::<libc::timeval>() as u32;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            tv_len,
        );
        listening();
        let end = Instant::now() + Duration::from_millis(millis);
        let mut buf = vec![0u8; 65536];
        while Instant::now() < end {
            let mut from: libc::sockaddr_ll = std::mem::zeroed();
            let mut from_len = len;
            let n = libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            );
            // Only what the interface received: our own transmissions are not yet
            // checksummed when offloaded.
            if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let Ok(ip) = parse_ethernet(&buf[..n as usize]) else {
                continue;
            };
            let Some((sport, dport)) = ip.ports() else {
                continue;
            };
            let ok = |b: bool| if b { "ok" } else { "BAD" };
            let l4 = ip.l4_checksum_ok().map_or("-", ok);
            let [a, b] = [ip.src(), ip.dst()].map(std::net::Ipv4Addr::from);
            println!(
                "{a}:{sport} {b}:{dport} {} ip={} l4={l4}",
                ip.protocol(),
                ok(ip.header_checksum_ok())
            );
        }
    }
    Ok(())
}

fn echo_tcp(a: &str) -> Result<(), String> {
    let l = TcpListener::bind(addr(a)?).map_err(|e| format!("bind {a}: {e}"))?;
    listening();
    let (mut s, peer) = l.accept().map_err(|e| e.to_string())?;
    let reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    for line in reader.lines() {
        let line = line.map_err(|e| e.to_string())?;
        writeln!(s, "{line} from {}", peer.ip()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn hold_tcp(a: &str, count: &str, millis: &str) -> Result<(), String> {
    let count: u32 = count.parse().map_err(|e| format!("{count}: {e}"))?;
    let pause = Duration::from_millis(millis.parse().map_err(|e| format!("{millis}: {e}"))?);
    let mut s =
        TcpStream::connect_timeout(&addr(a)?, TIMEOUT).map_err(|e| format!("connect {a}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT)).ok();
    let mut reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    for i in 1..=count {
        writeln!(s, "line-{i}").map_err(|e| format!("line {i}: {e}"))?;
        let mut answer = String::new();
        reader
            .read_line(&mut answer)
            .map_err(|e| format!("line {i}: {e}"))?;
        if !answer.starts_with(&format!("line-{i} ")) {
            return Err(format!("line {i}: unexpected answer {answer:?}"));
        }
        std::thread::sleep(pause);
    }
    println!("{count} lines on one connection");
    Ok(())
}
