//! Harnesses for Outrigger's end-to-end tests.
//!
//! Everything here talks over real loopback sockets: [`TestUpstream`] is an HTTP server that
//! says who it is and records what it received, [`Outrigger`] runs the real binary with an
//! environment, and [`client`] sends requests the way apps do.

pub mod client;
pub mod consul;
pub mod dnsmasq;
pub mod eureka;
pub mod h2node;
pub mod node_file;
pub mod process;
pub mod raw;
pub mod rnacos;
pub mod serve;
pub mod shape;
pub mod tls;
pub mod upstream;
pub mod wait;

pub use node_file::NodeFile;
pub use process::Outrigger;
pub use upstream::TestUpstream;

/// A loopback port that was free a moment ago.
///
/// Binding port 0 and releasing it leaves a small race with other processes; tests accept it
/// because the alternative (passing sockets into the proxy) is not how users run it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("loopback has free ports")
}
