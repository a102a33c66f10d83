// A Rust client that leaks: it connects to 127.0.0.1:PORT N times from
// open_broker_connection and never closes. Usage: leaky PORT N
use std::net::TcpStream;

#[inline(never)]
fn open_broker_connection(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).expect("connect")
}

#[inline(never)]
fn reconnect_loop(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| open_broker_connection(port)).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let held = reconnect_loop(args[1].parse().unwrap(), args[2].parse().unwrap());
    println!("ready {}", std::process::id());
    std::thread::park();
    drop(held);
}
