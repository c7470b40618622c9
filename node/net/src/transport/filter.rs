//! A UDP socket that drops, before QUIC sees them, all datagrams from
//! addresses the residency policy refuses, and sends nothing to them.
//!
//! Checking a connection when quinn hands it over (`Endpoint::accept`) is
//! too late for "nothing is sent": quinn answers a packet of an unknown
//! version with Version Negotiation, and an unknown connection's packet
//! with a stateless reset, on its own. Below quinn, such a datagram never
//! arrives.

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

/// Whether datagrams from (and to) an address may pass.
pub type DatagramFilter = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

/// A socket whose traffic passes through a [`DatagramFilter`].
pub struct FilteredSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    allow: DatagramFilter,
    dropped: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl fmt::Debug for FilteredSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilteredSocket").field("inner", &self.inner).field("dropped", &self.dropped).finish()
    }
}

/// Longest silence between two warnings about dropped datagrams.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl FilteredSocket {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, allow: DatagramFilter) -> Self {
        FilteredSocket { inner, allow, dropped: AtomicU64::new(0), last_warning: Mutex::new(None) }
    }

    /// Datagrams dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn note_drop(&self, from: SocketAddr) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(%from, dropped = n, "dropped datagrams from an address outside the residency boundary; nothing was answered");
        }
    }
}

impl AsyncUdpSocket for FilteredSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if !(self.allow)(transmit.destination) {
            // never sent; to quinn it is a datagram lost on the way
            self.note_drop(transmit.destination);
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            let mut kept = 0;
            for i in 0..n {
                if !(self.allow)(meta[i].addr) {
                    self.note_drop(meta[i].addr);
                    continue;
                }
                if kept != i {
                    let len = meta[i].len;
                    let (front, back) = bufs.split_at_mut(i);
                    front[kept][..len].copy_from_slice(&back[0][..len]);
                    meta[kept] = meta[i];
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // everything was dropped: read on (the socket registers the
            // waker when it has nothing more)
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
