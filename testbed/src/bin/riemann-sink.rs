//! The testbed's Riemann protocol sink as a process, for benchmarks: prints `tcp=ADDR udp=ADDR`,
//! then `received N` whenever a line arrives on stdin; exits at end of input.

use std::io::BufRead;

fn main() {
    let sink = testbed::riemann::Sink::start();
    println!("tcp={} udp={}", sink.tcp_addr(), sink.udp_addr());
    for _ in std::io::stdin().lock().lines() {
        println!("received {}", sink.received_count());
    }
}
