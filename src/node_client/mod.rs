//! How Outrigger talks to a node: opening connections (`connect`, with TLS from `tls`), the
//! lean HTTP/1.1 client for the common request (`h1`), and the per-worker pool of idle
//! connections that both clients reuse (`pool`).

pub mod connect;
pub mod h1;
pub mod pool;
pub mod tls;
