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
//! - `nptest send-udp ADDR:PORT SIZE [SPORT]`: (with NPTEST_EXPECT_SOURCE set, the answer
//!   must come from ADDR:PORT) sends one datagram of SIZE bytes (from
//!   source port SPORT if given) and prints the answer.
//! - `nptest probe-udp ADDR:PORT`: sends one datagram on a connected socket and prints
//!   what came back: `answered`, `refused` (an ICMP port unreachable reached the socket)
//!   or `silence`.
//! - `nptest sink-tcp ADDR:PORT`: reads one connection to its end, then prints the bytes.
//! - `nptest bulk-tcp ADDR:PORT MIB`: writes MIB MiB on one connection, in 64 KiB writes;
//!   fails when a write waits more than 3 s (a stalled stream), rather than hanging.
//!   Both ends run on CPU 0 only: veth hands packets to netif_rx() on the CPU that sends
//!   them, and a segment sent from another CPU (by a moved sender, or by ACK processing
//!   on the receiver's CPU) lands on another backlog, which reorders a stream by itself.
//! - `nptest echo-tcp ADDR:PORT`: answers every line of one connection, until it closes.
//! - `nptest hold-tcp ADDR:PORT COUNT MILLIS`: one connection, COUNT lines MILLIS ms apart,
//!   each answer checked: a long-lived connection, to see it survive changes.
//! - `nptest capture IFACE MILLIS`: captures the TCP/UDP frames that IFACE receives
//!   for MILLIS ms (AF_PACKET) and prints one line per frame with both checksums verified
//!   in software: `SRC:SPORT DST:DPORT PROTO ip=ok|BAD l4=ok|BAD|-` (IPv6: `[SRC]:SPORT
//!   [DST]:DPORT PROTO ip=- l4=…`, the L4 checksum over the IPv6 pseudo-header). Veth never checks
//!   checksums, so this is how the tests see what is really on the wire.
//! - Masquerade robustness (issue 12): `nptest capture-ip IFACE MILLIS` prints every IPv4
//!   frame IFACE receives, valid or not (`SRC DST PROTO ip=ok|BAD hl=N [type=N]`);
//!   `nptest send-junk DST REPEAT` sends from a raw socket what is not plain TCP/UDP/echo
//!   (other protocols, other ICMP types, malformed headers); `nptest many-tcp ADDR COUNT`
//!   holds COUNT connections open at once; `nptest echo-all tcp|udp ADDR` answers every
//!   line of every peer with `<line> from <ip>:<port>`; `nptest hold-from tcp|udp SPORT
//!   ADDR COUNT MILLIS` is `hold-tcp` from a fixed source port, for TCP or UDP.
//!   `nptest send-bad-ip-csum IFACE GATEWAY SPORT DST:DPORT COUNT` writes UDP frames with
//!   a wrong IPv4 header checksum straight onto IFACE, to GATEWAY's MAC.
//! - Conntrack robustness (issue 12, items 1-3): `nptest syn-flood ADDR:PORT COUNT` sends
//!   COUNT TCP SYNs from a raw socket, spoofed from random TEST-NET-2 addresses and ports;
//!   `nptest udp-flood ADDR:PORT COUNT` sends one datagram from each of COUNT source ports
//!   (a new flow each); `nptest idle-tcp ADDR:PORT FILE` exchanges a line on a new
//!   connection, prints `listening`, waits (up to 60 s) until FILE exists, then exchanges
//!   another line on the same connection and prints `2 lines on one connection`;
//!   `nptest blind-tcp SRC:SPORT DST:DPORT FLAGS COUNT` sends COUNT segments with FLAGS
//!   (letters of `FSRPA`) spoofed from SRC:SPORT, at sequence numbers spread over the
//!   whole space, as a blind attacker who knows the 4-tuple would.
//! - Fragments (issue 12, item 12): `nptest send-fragments ADDR:PORT SIZE in-order|reversed`
//!   sends one UDP datagram of SIZE bytes as 1,000-byte IP fragments, from a raw socket,
//!   in order or last first, and prints the answer that reaches the datagram's source
//!   port (as `send-udp`), or fails when none comes.
//! - IPv6 (issue 15): `nptest send-ra IFACE LIFETIME` sends one router advertisement to
//!   all nodes (ff02::1) on IFACE, from its link-local address, with a router lifetime of
//!   LIFETIME seconds: the receivers that take RAs learn a default route via the sender.
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
        ["capture-ip", iface, millis] => capture_ip(iface, millis),
        ["send-junk", dst, repeat] => send_junk(dst, repeat),
        ["many-tcp", addr, count] => many_tcp(addr, count),
        ["echo-all", proto, addr] => echo_all(proto, addr),
        ["hold-from", proto, sport, addr, count, millis] => {
            hold_from(proto, sport, addr, count, millis)
        }
        ["send-bad-ip-csum", iface, gateway, sport, dst, count] => {
            send_bad_ip_csum(iface, gateway, sport, dst, count)
        }
        ["syn-flood", addr, count] => syn_flood(addr, count),
        ["udp-flood", addr, count] => udp_flood(addr, count),
        ["idle-tcp", addr, file] => idle_tcp(addr, file),
        ["blind-tcp", src, dst, flags, count] => blind_tcp(src, dst, flags, count),
        ["send-fragments", addr, size, order] => send_fragments(addr, size, order),
        ["send-ra", iface, lifetime] => send_ra(iface, lifetime),
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
    let to = addr(a)?;
    // The family of the destination: an IPv6 one needs an IPv6 socket.
    let any = if to.is_ipv6() { "[::]" } else { "0.0.0.0" };
    let bind = format!("{any}:{}", sport.unwrap_or("0"));
    let s = UdpSocket::bind(&bind).map_err(|e| format!("bind {bind}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT)).ok();
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    s.send_to(&payload, to)
        .map_err(|e| format!("send to {a}: {e}"))?;
    let mut buf = [0u8; 1024];
    let (n, from) = s
        .recv_from(&mut buf)
        .map_err(|e| format!("no answer from {a}: {e}"))?;
    // A resolver drops an answer from another address than it asked: with
    // NPTEST_EXPECT_SOURCE set, so does this client.
    if std::env::var_os("NPTEST_EXPECT_SOURCE").is_some() && from != to {
        return Err(format!("the answer came from {from}, not from {to}"));
    }
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
    s.set_write_timeout(Some(TIMEOUT)).ok();
    let buf = vec![0x5au8; 64 * 1024];
    for i in 0..mib * 16 {
        s.write_all(&buf)
            .map_err(|e| format!("write after {} KiB: {e}", i * 64))?;
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
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    use netplane_common::packet::parse_ethernet;

    let millis: u64 = millis.parse().map_err(|e| format!("{millis}: {e}"))?;
    let fd = packet_socket(iface)?;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
    // SAFETY: recvfrom on a socket we own, into live locals.
    unsafe {
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
            let ok = |b: bool| if b { "ok" } else { "BAD" };
            // IPv6: no header checksum; the L4 one covers the addresses (pseudo-header).
            if let Ok(ip) = netplane_common::packet6::parse_ethernet6(&buf[..n as usize]) {
                if let Some((sport, dport)) = ip.ports() {
                    let l4 = ip.l4_checksum_ok().map_or("-", ok);
                    let [a, b] = [ip.src(), ip.dst()].map(std::net::Ipv6Addr::from);
                    println!("[{a}]:{sport} [{b}]:{dport} {} ip=- l4={l4}", ip.protocol);
                }
                continue;
            }
            let Ok(ip) = parse_ethernet(&buf[..n as usize]) else {
                continue;
            };
            let Some((sport, dport)) = ip.ports() else {
                continue;
            };
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

// --- Masquerade robustness (issue 12, items 9-11): raw junk, wire census, many
// connections, fixed source ports. ---

/// `capture-ip`: every IPv4 frame IFACE receives, read from the raw bytes (no validity
/// required): `SRC DST PROTO ip=ok|BAD hl=IHL_BYTES [type=N]` (ICMP's type).
fn capture_ip(iface: &str, millis: &str) -> Result<(), String> {
    let millis: u64 = millis.parse().map_err(|e| format!("{millis}: {e}"))?;
    let fd = packet_socket(iface)?;
    listening();
    let end = std::time::Instant::now() + Duration::from_millis(millis);
    let mut buf = vec![0u8; 65536];
    while std::time::Instant::now() < end {
        let Some(f) = recv_incoming(&fd, &mut buf) else {
            continue;
        };
        if f.len() < 34 || f[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &f[14..];
        let [a, b] = [&ip[12..16], &ip[16..20]]
            .map(|s| std::net::Ipv4Addr::from(<[u8; 4]>::try_from(s).expect("4 bytes")));
        let hlen = usize::from(ip[0] & 0x0f) * 4;
        let ip_ok =
            hlen >= 20 && ip.len() >= hlen && netplane_common::csum::checksum(&ip[..hlen]) == 0;
        let icmp_type = match (ip[9], ip.get(hlen)) {
            (1, Some(t)) if hlen >= 20 => format!(" type={t}"),
            _ => String::new(),
        };
        println!(
            "{a} {b} {} ip={} hl={hlen}{icmp_type}",
            ip[9],
            if ip_ok { "ok" } else { "BAD" }
        );
    }
    Ok(())
}

/// An AF_PACKET socket bound to `iface`, with a 100 ms receive timeout.
fn packet_socket(iface: &str) -> Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
            return Err(format!("AF_PACKET: {}", std::io::Error::last_os_error()));
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
            return Err(format!("bind {iface}: {}", std::io::Error::last_os_error()));
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        Ok(fd)
    }
}

/// One frame the interface received (not one it sent), if any came within the timeout.
fn recv_incoming<'b>(fd: &std::os::fd::OwnedFd, buf: &'b mut [u8]) -> Option<&'b [u8]> {
    use std::os::fd::AsRawFd;
    // SAFETY: recvfrom into our buffer and a sockaddr_ll, with their sizes.
    unsafe {
        let mut from: libc::sockaddr_ll = std::mem::zeroed();
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        let n = libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut from as *mut libc::sockaddr_ll).cast(),
            &mut from_len,
        );
        (n > 0 && from.sll_pkttype != libc::PACKET_OUTGOING).then(|| &buf[..n as usize])
    }
}

/// An IPv4 header of `ihl` words (options: NOPs) for a payload of `len` bytes; the
/// kernel fills in the source, the total length and the checksum of one of ≥ 5 words
/// (raw_send_hdrinc()).
fn ip_header(proto: u8, ihl: u8, frag: u16, dst: [u8; 4], len: usize) -> Vec<u8> {
    let hlen = usize::from(ihl) * 4;
    let mut h = vec![1u8; hlen.max(20)];
    h[..20].copy_from_slice(&[0; 20]);
    h[0] = 0x40 | ihl;
    h[2..4].copy_from_slice(&((hlen.max(20) + len) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[16..20].copy_from_slice(&dst);
    h
}

/// An ICMP message of `ty` with its checksum, `body` after the 4-byte header.
fn icmp(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    m.extend_from_slice(body);
    let c = netplane_common::csum::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// `send-junk DST`: from a raw socket (IPPROTO_RAW), each packet a container could send
/// that is not plain TCP, UDP or ICMP echo: `translatable` ones (ICMP timestamp, GRE,
/// protocol 253, UDP with IP options) and the rest (truncated or inconsistent headers, a
/// later fragment of no datagram, an ICMP error about no flow, a router solicitation),
/// REPEAT times each. Prints how many were sent.
fn send_junk(dst: &str, repeat: &str) -> Result<(), String> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let repeat: u32 = repeat.parse().map_err(|e| format!("{repeat}: {e}"))?;
    let d: std::net::Ipv4Addr = dst.parse().map_err(|e| format!("{dst}: {e}"))?;
    let o = d.octets();
    let udp = |sport: u16, len: usize| {
        let mut u = vec![0u8; len.max(8)];
        u[..2].copy_from_slice(&sport.to_be_bytes());
        u[2..4].copy_from_slice(&9u16.to_be_bytes());
        u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        u.truncate(len);
        u
    };
    let mut tcp_doff2 = vec![0u8; 20];
    tcp_doff2[..4].copy_from_slice(&[0x9c, 0x41, 0, 80]);
    tcp_doff2[12] = 2 << 4;
    tcp_doff2[13] = 0x02;
    // An ICMP port unreachable quoting a UDP datagram outside → container that never was.
    let mut quoted = ip_header(17, 5, 0, [10, 89, 0, 3], 8);
    quoted[12..16].copy_from_slice(&o);
    quoted.extend(udp(53, 8));
    let mut unreach = vec![0u8; 4];
    unreach.extend(quoted);
    let mut port_unreachable = icmp(3, &unreach);
    port_unreachable[1] = 3;
    let c = {
        port_unreachable[2..4].copy_from_slice(&[0, 0]);
        netplane_common::csum::checksum(&port_unreachable)
    };
    port_unreachable[2..4].copy_from_slice(&c.to_be_bytes());
    let packets: Vec<(u8, u8, u16, Vec<u8>)> = vec![
        // Translatable.
        (
            1,
            5,
            0,
            icmp(13, &[0x12, 0x34, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        ),
        (
            47,
            5,
            0,
            [0, 0, 0x08, 0x00]
                .iter()
                .copied()
                .chain([0x45; 20])
                .collect(),
        ),
        (253, 5, 0, vec![0xab; 16]),
        (17, 6, 0, udp(40_001, 12)),
        // Not translatable.
        (1, 5, 0, icmp(10, &[0, 0, 0, 0])),
        (1, 5, 0, port_unreachable),
        (1, 5, 0, vec![8, 0]),
        (6, 5, 0, vec![0x9c, 0x40, 0, 80, 0, 0]),
        (6, 5, 0, tcp_doff2),
        (17, 5, 0, vec![0x9c, 0x42, 0]),
        (17, 5, 100, vec![0x5a; 16]),
    ];
    // SAFETY: a raw socket we own; sendto with a live buffer and sockaddr_in.
    let fd = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        if fd < 0 {
            return Err(format!("raw socket: {}", std::io::Error::last_os_error()));
        }
        OwnedFd::from_raw_fd(fd)
    };
    let mut sent = 0;
    for _ in 0..repeat {
        for (proto, ihl, frag, payload) in &packets {
            let mut pkt = ip_header(*proto, *ihl, *frag, o, payload.len());
            pkt.extend_from_slice(payload);
            if send_raw(&fd, &pkt, o).is_ok() {
                sent += 1;
            }
        }
    }
    println!("{sent} sent");
    Ok(())
}

/// `many-tcp ADDR COUNT`: COUNT connections open at once, each sending a line; then
/// every answer is read. Prints `COUNT ok`, or fails with how many failed and the first
/// error.
fn many_tcp(a: &str, count: &str) -> Result<(), String> {
    let count: u32 = count.parse().map_err(|e| format!("{count}: {e}"))?;
    let sa = addr(a)?;
    let mut open = Vec::new();
    let mut failures = Vec::new();
    for i in 0..count {
        match TcpStream::connect_timeout(&sa, TIMEOUT)
            .and_then(|mut s| writeln!(s, "c{i}").map(|()| s))
        {
            Ok(s) => open.push((i, s)),
            Err(e) => failures.push(format!("connection {i}: {e}")),
        }
    }
    for (i, s) in &open {
        s.set_read_timeout(Some(TIMEOUT)).ok();
        let mut answer = String::new();
        if let Err(e) = BufReader::new(s).read_line(&mut answer) {
            failures.push(format!("connection {i}: read: {e}"));
        } else if !answer.starts_with(&format!("c{i} ")) {
            failures.push(format!("connection {i}: answer {answer:?}"));
        }
    }
    if let Some(first) = failures.first() {
        return Err(format!("{} of {count} failed; {first}", failures.len()));
    }
    println!("{count} ok");
    Ok(())
}

/// `echo-all PROTO ADDR`: answers every line (TCP, every connection at once) or every
/// datagram (UDP) with `<line> from <peer ip>:<peer port>`, until killed.
fn echo_all(proto: &str, a: &str) -> Result<(), String> {
    let sa = addr(a)?;
    if proto == "udp" {
        let s = UdpSocket::bind(sa).map_err(|e| format!("bind {a}: {e}"))?;
        listening();
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, peer) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
            let line = String::from_utf8_lossy(&buf[..n]).trim_end().to_owned();
            let _ = s.send_to(format!("{line} from {peer}").as_bytes(), peer);
        }
    }
    let l = TcpListener::bind(sa).map_err(|e| format!("bind {a}: {e}"))?;
    listening();
    loop {
        let (mut s, peer) = l.accept().map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            let Ok(r) = s.try_clone() else { return };
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { return };
                if writeln!(s, "{line} from {peer}").is_err() {
                    return;
                }
            }
        });
    }
}

/// `hold-from PROTO SPORT ADDR COUNT MILLIS`: a TCP connection or a connected UDP
/// socket from source port SPORT (any local address) to ADDR, COUNT lines MILLIS ms
/// apart, each answer checked to be its own line. Prints `listening` after the first
/// answer (so that a harness can wait for the flow to exist), then
/// `<count> lines from :SPORT`.
fn hold_from(proto: &str, sport: &str, a: &str, count: &str, millis: &str) -> Result<(), String> {
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
    let sport: u16 = sport.parse().map_err(|e| format!("{sport}: {e}"))?;
    let count: u32 = count.parse().map_err(|e| format!("{count}: {e}"))?;
    let pause = Duration::from_millis(millis.parse().map_err(|e| format!("{millis}: {e}"))?);
    let sa = addr(a)?;
    let kind = if proto == "udp" {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    // SAFETY: socket and bind with a live sockaddr_in; the fd is owned from here on.
    let fd = unsafe {
        let fd = libc::socket(libc::AF_INET, kind, 0);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: sport.to_be(),
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        if libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            return Err(format!(
                "bind :{sport}: {}",
                std::io::Error::last_os_error()
            ));
        }
        fd.into_raw_fd()
    };
    /// Sends a line, returns the answer.
    type Exchange = Box<dyn FnMut(&str) -> Result<String, String>>;
    let mut exchange: Exchange = if proto == "udp" {
        // SAFETY: the fd is a bound UDP socket, now owned by the UdpSocket.
        let s = unsafe { UdpSocket::from_raw_fd(fd) };
        s.connect(sa).map_err(|e| format!("connect {a}: {e}"))?;
        s.set_read_timeout(Some(TIMEOUT)).ok();
        Box::new(move |line| {
            s.send(line.as_bytes()).map_err(|e| e.to_string())?;
            // Answers to another process's lines (another flow with this 4-tuple on the
            // wire) are skipped: each line names its process.
            loop {
                let mut buf = [0u8; 512];
                let n = s.recv(&mut buf).map_err(|e| e.to_string())?;
                let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
                if answer.starts_with(&format!("{line} ")) {
                    return Ok(answer);
                }
            }
        })
    } else {
        // SAFETY: the fd is a bound TCP socket, now owned by the TcpStream.
        let s = unsafe { TcpStream::from_raw_fd(fd) };
        let SocketAddr::V4(v4) = sa else {
            return Err(format!("{a}: IPv4 only"));
        };
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: connect with a live sockaddr_in and its size.
        let rc = unsafe {
            libc::connect(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("connect {a} from :{sport}: {e}"));
        }
        s.set_read_timeout(Some(TIMEOUT)).ok();
        let mut reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let mut s = s;
        Box::new(move |line| {
            writeln!(s, "{line}").map_err(|e| e.to_string())?;
            let mut answer = String::new();
            reader.read_line(&mut answer).map_err(|e| e.to_string())?;
            Ok(answer)
        })
    };
    for i in 1..=count {
        let line = format!("line-{i}-from-{sport}-pid-{}", std::process::id());
        let answer = exchange(&line).map_err(|e| format!("line {i}: {e}"))?;
        if !answer.starts_with(&format!("{line} ")) {
            return Err(format!("line {i}: unexpected answer {answer:?}"));
        }
        if i == 1 {
            listening();
        }
        std::thread::sleep(pause);
    }
    println!("{count} lines from :{sport}");
    Ok(())
}

// --- Conntrack robustness (issue 12, items 1-3): floods and idle connections. ---

/// A raw IPv4 socket that sends whole packets (IPPROTO_RAW implies IP_HDRINCL).
fn raw_ip_socket() -> Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(format!("raw socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a descriptor we just opened.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Sends `packet` (a whole IPv4 packet) to `dst` on raw socket `fd`.
fn send_raw(fd: &std::os::fd::OwnedFd, packet: &[u8], dst: [u8; 4]) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the buffer and the address outlive the call; their lengths are theirs.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(format!("sendto: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A 20-byte IPv4 header from `src` (0: the kernel fills in the sender's address) to
/// `dst`, for `len` bytes of `proto`; the kernel fills in the checksum (raw_send_hdrinc()).
fn flood_ip_header(proto: u8, src: [u8; 4], dst: [u8; 4], len: usize) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + len) as u16).to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    h
}

/// xorshift32: cheap, reproducible spread of spoofed sources.
fn next_random(state: &mut u32) -> u32 {
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    *state
}

fn ipv4_target(a: &str) -> Result<([u8; 4], u16), String> {
    match addr(a)? {
        SocketAddr::V4(v4) => Ok((v4.ip().octets(), v4.port())),
        SocketAddr::V6(_) => Err(format!("{a}: not IPv4")),
    }
}

/// A whole IPv4 packet with a 20-byte TCP header from `src` to `dst` (address, port), with
/// sequence and acknowledgment numbers `seq` and `ack`, flag byte `flags`, and a right TCP
/// checksum (the kernel fills in the IP one).
fn tcp_segment(
    (src, sport): ([u8; 4], u16),
    (dst, dport): ([u8; 4], u16),
    seq: u32,
    ack: u32,
    flags: u8,
) -> Vec<u8> {
    use netplane_common::csum;
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    let c = !csum::fold(csum::sum(&tcp, csum::pseudo_header(src, dst, 6, 20)));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut packet = flood_ip_header(6, src, dst, 20).to_vec();
    packet.extend_from_slice(&tcp);
    packet
}

/// `syn-flood ADDR:PORT COUNT`: COUNT SYNs to ADDR:PORT, each from a random address of
/// 198.51.100.0/24 (TEST-NET-2) and a random port, as fast as the socket takes them.
/// Prints `COUNT sent`.
fn syn_flood(a: &str, count: &str) -> Result<(), String> {
    let (dst, dport) = ipv4_target(a)?;
    let count: u32 = count.parse().map_err(|e| format!("{count}: {e}"))?;
    let fd = raw_ip_socket()?;
    let mut state = 0x2545_f491u32;
    for _ in 0..count {
        let r = next_random(&mut state);
        let src = [198, 51, 100, (r % 254 + 1) as u8];
        let sport = 1024 + ((r >> 8) % 64_000) as u16;
        let seq = next_random(&mut state);
        let packet = tcp_segment((src, sport), (dst, dport), seq, 0, 0x02); // SYN
        send_raw(&fd, &packet, dst)?;
    }
    println!("{count} sent");
    Ok(())
}

/// `udp-flood ADDR:PORT COUNT`: one datagram to ADDR:PORT from each of COUNT source ports
/// (from 1024 up), from this namespace's own address: COUNT new flows. Prints `COUNT sent`.
fn udp_flood(a: &str, count: &str) -> Result<(), String> {
    let (dst, dport) = ipv4_target(a)?;
    let count: u32 = count.parse().map_err(|e| format!("{count}: {e}"))?;
    if count > 64_000 {
        return Err(format!("{count}: at most 64000 source ports"));
    }
    let fd = raw_ip_socket()?;
    for i in 0..count {
        let sport = 1024 + i as u16;
        let mut udp = [0u8; 9];
        udp[0..2].copy_from_slice(&sport.to_be_bytes());
        udp[2..4].copy_from_slice(&dport.to_be_bytes());
        udp[4..6].copy_from_slice(&9u16.to_be_bytes());
        // Checksum 0: none (RFC 768), as the source address is the kernel's to fill in.
        udp[8] = b'x';
        let mut packet = flood_ip_header(17, [0; 4], dst, udp.len()).to_vec();
        packet.extend_from_slice(&udp);
        send_raw(&fd, &packet, dst)?;
    }
    println!("{count} sent");
    Ok(())
}

/// `idle-tcp ADDR:PORT FILE`: a connection that exchanges a line, stays idle until FILE
/// exists, then exchanges another: an established flow that must survive what happens
/// meanwhile.
fn idle_tcp(a: &str, file: &str) -> Result<(), String> {
    let mut s =
        TcpStream::connect_timeout(&addr(a)?, TIMEOUT).map_err(|e| format!("connect {a}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT)).ok();
    let mut reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut exchange = |i: u32| -> Result<(), String> {
        writeln!(s, "line-{i}").map_err(|e| format!("line {i}: {e}"))?;
        let mut answer = String::new();
        reader
            .read_line(&mut answer)
            .map_err(|e| format!("line {i}: {e}"))?;
        if !answer.starts_with(&format!("line-{i} ")) {
            return Err(format!("line {i}: unexpected answer {answer:?}"));
        }
        Ok(())
    };
    exchange(1)?;
    listening();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(file).exists() {
        if std::time::Instant::now() > deadline {
            return Err(format!("{file} never appeared"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    exchange(2)?;
    println!("2 lines on one connection");
    Ok(())
}

/// `blind-tcp SRC:SPORT DST:DPORT FLAGS COUNT`: COUNT segments with FLAGS from a spoofed
/// SRC:SPORT, the i-th at sequence number i × 2^32 / COUNT plus a fixed odd offset: spread
/// so that at most one can fall near any flow's place. Prints `COUNT sent`.
fn blind_tcp(src: &str, dst: &str, flags: &str, count: &str) -> Result<(), String> {
    let (saddr, sport) = ipv4_target(src)?;
    let (daddr, dport) = ipv4_target(dst)?;
    let count: u32 = count.parse().map_err(|e| format!("{count}: {e}"))?;
    let mut bits = 0u8;
    for c in flags.chars() {
        bits |= match c {
            'F' => 0x01,
            'S' => 0x02,
            'R' => 0x04,
            'P' => 0x08,
            'A' => 0x10,
            _ => return Err(format!("{flags}: flags are letters of FSRPA")),
        };
    }
    let fd = raw_ip_socket()?;
    for i in 0..count {
        let seq = ((u64::from(i) << 32) / u64::from(count.max(1))) as u32 ^ 0x1357_9bdf;
        let packet = tcp_segment(
            (saddr, sport),
            (daddr, dport),
            seq,
            seq.rotate_left(16),
            bits,
        );
        send_raw(&fd, &packet, daddr)?;
    }
    println!("{count} sent");
    Ok(())
}

/// `send-bad-ip-csum IFACE GATEWAY SPORT DST:DPORT COUNT`: COUNT UDP datagrams from
/// IFACE's address and port SPORT to DST:DPORT, written straight onto IFACE (AF_PACKET)
/// to GATEWAY's MAC (from the neighbour table, /proc/net/arp), with a wrong IPv4 header
/// checksum: what ip_rcv() drops, and a redirect would not.
fn send_bad_ip_csum(
    iface: &str,
    gateway: &str,
    sport: &str,
    dst: &str,
    count: &str,
) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let sport: u16 = sport.parse().map_err(|e| format!("{sport}: {e}"))?;
    let count: u32 = count.parse().map_err(|e| format!("{count}: {e}"))?;
    let SocketAddr::V4(dst) = addr(dst)? else {
        return Err(format!("{dst}: IPv4 only"));
    };
    let mac = |text: &str| -> Result<[u8; 6], String> {
        let bytes: Vec<u8> = text
            .trim()
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).map_err(|e| format!("MAC {text}: {e}")))
            .collect::<Result<_, _>>()?;
        bytes.try_into().map_err(|_| format!("MAC {text}"))
    };
    let arp = std::fs::read_to_string("/proc/net/arp").map_err(|e| e.to_string())?;
    let gw_mac = arp
        .lines()
        .find(|l| l.split_whitespace().next() == Some(gateway))
        .and_then(|l| l.split_whitespace().nth(3))
        .ok_or(format!("no neighbour entry for {gateway}"))?;
    let gw_mac = mac(gw_mac)?;
    let own_mac = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .map_err(|e| format!("{iface}: {e}"))?;
    let own_mac = mac(&own_mac)?;
    // The interface's address: the source a connected UDP socket gets.
    let probe = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    probe.connect(dst).map_err(|e| e.to_string())?;
    let std::net::IpAddr::V4(src) = probe.local_addr().map_err(|e| e.to_string())?.ip() else {
        return Err("no IPv4 source".into());
    };
    let payload = b"bad-ip-csum";
    let mut ip = ip_header(17, 5, 0, dst.ip().octets(), 8 + payload.len());
    ip[12..16].copy_from_slice(&src.octets());
    let c = netplane_common::csum::checksum(&ip);
    // Right but for one bit: a wrong checksum.
    ip[10..12].copy_from_slice(&(c ^ 0x0100).to_be_bytes());
    let mut frame = Vec::new();
    frame.extend_from_slice(&gw_mac);
    frame.extend_from_slice(&own_mac);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&sport.to_be_bytes());
    frame.extend_from_slice(&dst.port().to_be_bytes());
    frame.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    let fd = packet_socket(iface)?;
    let mut sent = 0;
    for _ in 0..count {
        // SAFETY: send on our bound AF_PACKET socket, from a live buffer.
        let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n == frame.len() as isize {
            sent += 1;
        }
    }
    println!("{sent} sent");
    Ok(())
}

/// `send-fragments ADDR:PORT SIZE ORDER`: see the header.
fn send_fragments(a: &str, size: &str, order: &str) -> Result<(), String> {
    use netplane_common::csum;
    const PIECE: usize = 1_000; // a multiple of 8, as every fragment but the last must be
    let (dst, dport) = ipv4_target(a)?;
    let size: usize = size.parse().map_err(|e| format!("{size}: {e}"))?;
    let reversed = match order {
        "in-order" => false,
        "reversed" => true,
        _ => return Err(format!("{order}: in-order or reversed")),
    };
    // A socket for the answer; connecting it also tells the source address the route picks.
    let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    s.connect(a).map_err(|e| format!("connect {a}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT)).ok();
    let SocketAddr::V4(local) = s.local_addr().map_err(|e| e.to_string())? else {
        return Err("not IPv4".into());
    };
    let src = local.ip().octets();
    let mut udp: Vec<u8> = local.port().to_be_bytes().to_vec();
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&((8 + size) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend((0..size).map(|i| (i % 251) as u8));
    let c = !csum::fold(csum::sum(
        &udp,
        csum::pseudo_header(src, dst, 17, udp.len() as u16),
    ));
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let id = (std::process::id() as u16).wrapping_mul(31);
    let mut pieces: Vec<Vec<u8>> = udp
        .chunks(PIECE)
        .enumerate()
        .map(|(i, chunk)| {
            let more = (i + 1) * PIECE < udp.len();
            let frag = ((i * PIECE / 8) as u16) | if more { 0x2000 } else { 0 };
            let mut h = flood_ip_header(17, src, dst, chunk.len());
            h[4..6].copy_from_slice(&id.to_be_bytes());
            h[6..8].copy_from_slice(&frag.to_be_bytes());
            let mut packet = h.to_vec();
            packet.extend_from_slice(chunk);
            packet
        })
        .collect();
    if reversed {
        pieces.reverse();
    }
    let fd = raw_ip_socket()?;
    for piece in &pieces {
        send_raw(&fd, piece, dst)?;
    }
    let mut buf = [0u8; 1024];
    let n = s
        .recv(&mut buf)
        .map_err(|e| format!("no answer from {a}: {e}"))?;
    println!("{}", String::from_utf8_lossy(&buf[..n]));
    Ok(())
}

/// One router advertisement (RFC 4861, 4.2) to ff02::1 on `iface`: hop limit 255 (a
/// receiver drops any other), the kernel fills in the ICMPv6 checksum of a raw ICMPv6
/// socket, and the source is the interface's link-local address.
fn send_ra(iface: &str, lifetime: &str) -> Result<(), String> {
    let lifetime: u16 = lifetime.parse().map_err(|e| format!("{lifetime}: {e}"))?;
    let index = nix::net::if_::if_nametoindex(iface).map_err(|e| format!("{iface}: {e}"))?;
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6);
        if fd < 0 {
            return Err(format!(
                "raw ICMPv6 socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        let hops: libc::c_int = 255;
        let ifindex = index as libc::c_int;
        for (opt, val) in [
            (libc::IPV6_MULTICAST_HOPS, hops),
            (libc::IPV6_MULTICAST_IF, ifindex),
        ] {
            let r = libc::setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                opt,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            if r < 0 {
                libc::close(fd);
                return Err(format!("setsockopt: {}", std::io::Error::last_os_error()));
            }
        }
        // type 134, code 0, checksum (kernel), cur hop limit 64, flags 0, router lifetime,
        // reachable time 0, retrans timer 0.
        let mut ra = [0u8; 16];
        ra[0] = 134;
        ra[4] = 64;
        ra[6..8].copy_from_slice(&lifetime.to_be_bytes());
        let mut to: libc::sockaddr_in6 = std::mem::zeroed();
        to.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        to.sin6_addr.s6_addr = "ff02::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
        to.sin6_scope_id = index;
        let n = libc::sendto(
            fd,
            ra.as_ptr().cast(),
            ra.len(),
            0,
            (&to as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n < 0 {
            return Err(format!("send the RA on {iface}: {err}"));
        }
    }
    println!("sent");
    Ok(())
}
