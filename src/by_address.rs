//! Lists sorted by socket address, as node sets keep their endpoints: how an update carries
//! per-address work (endpoint state, URI authorities, ring points) over from the previous one.

use std::net::SocketAddr;

/// Pairs each of `addrs` (sorted) with what `old` (sorted by address) had for it, in one
/// merge pass: no hashing, and the addresses that left are skipped on the way.
pub(crate) fn carried<T>(
    old: impl IntoIterator<Item = (SocketAddr, T)>,
    addrs: impl IntoIterator<Item = SocketAddr>,
) -> impl Iterator<Item = (SocketAddr, Option<T>)> {
    let mut old = old.into_iter().peekable();
    addrs.into_iter().map(move |addr| {
        while old.next_if(|(a, _)| *a < addr).is_some() {}
        (addr, old.next_if(|(a, _)| *a == addr).map(|(_, kept)| kept))
    })
}
