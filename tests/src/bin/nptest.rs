//! The connection tester the end-to-end tests run inside namespaces (as netavark's tests
//! do): a one-shot server that reports who connected, and a client.
//!
//! - `nptest serve-tcp ADDR:PORT`: accepts one connection, reads a line, answers
//!   `<line> from <peer ip>` and exits. Prints `listening` once bound.
//! - `nptest send-tcp ADDR:PORT MESSAGE`: connects, sends MESSAGE, prints the answer.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve-tcp", addr] => serve_tcp(addr),
        ["send-tcp", addr, msg] => send_tcp(addr, msg),
        _ => Err("usage: nptest serve-tcp ADDR:PORT | send-tcp ADDR:PORT MESSAGE".into()),
    };
    if let Err(e) = res {
        eprintln!("nptest: {e}");
        std::process::exit(1);
    }
}

fn serve_tcp(addr: &str) -> Result<(), String> {
    let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("listening");
    std::io::stdout().flush().ok();
    let (mut s, peer) = l.accept().map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    writeln!(s, "{} from {}", line.trim_end(), peer.ip()).map_err(|e| e.to_string())
}

fn send_tcp(addr: &str, msg: &str) -> Result<(), String> {
    let sa = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
    writeln!(s, "{msg}").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    print!("{answer}");
    Ok(())
}
