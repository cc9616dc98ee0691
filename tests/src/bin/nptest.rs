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
