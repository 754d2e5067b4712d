//! A bound on a listener's open connections that a flood cannot turn
//! against legitimate clients.
//!
//! A [`ConnTable`] admits at most `max` connections. A connection is
//! *idle* while it has not proved itself (no whole request head yet on
//! the admin API, no handshake yet on the ring port) or rests between
//! requests, and *busy* while a [`Busy`] guard of it lives. When a
//! connection arrives at the cap, the oldest idle one is told to close
//! ([`Admitted::closed`] fires) and the newcomer takes its place; only
//! when every connection is busy is the newcomer refused. So a flood of
//! silent or half-open sockets, however large, keeps cycling through the
//! idle places and cannot lock out a client that completes its request or
//! handshake in the time the flood takes to open `max` more sockets; what
//! is busy (an established ring link, an event stream) is never evicted.
//!
//! Per source address, at most `per_source` connections may be idle at
//! once: past that, that source's own oldest idle connection makes room,
//! so one flooding address recycles its own places and does not push out
//! other addresses' connections while they handshake.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The open connections of one listener (cheap to clone: shared).
#[derive(Clone)]
pub struct ConnTable {
    inner: Arc<Mutex<Table>>,
    max: usize,
    per_source: usize,
}

struct Table {
    next_id: u64,
    open: BTreeMap<u64, Arc<Conn>>,
}

/// One open connection.
struct Conn {
    /// The peer's address.
    source: IpAddr,
    /// Live [`Busy`] guards.
    busy: AtomicUsize,
    /// Fired when the connection is evicted.
    close: CancellationToken,
}

/// A connection's place in the table; dropping it frees the place.
pub struct Admitted {
    table: ConnTable,
    id: u64,
    conn: Arc<Conn>,
    made_room: bool,
}

/// Marks its connection busy while it lives (see the module docs).
pub struct Busy(Arc<Conn>);

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// The bound in force.
    pub max: usize,
}

impl ConnTable {
    /// A table of at most `max` connections (at least 1), of which at
    /// most `per_source` (at least 1) idle ones from one address.
    pub fn new(max: usize, per_source: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Table {
                next_id: 0,
                open: BTreeMap::new(),
            })),
            max: max.max(1),
            per_source: per_source.max(1),
        }
    }

    /// Admits a new connection from `source`: when that address already
    /// has `per_source` idle connections, its oldest idle one makes room;
    /// when the table is full, the oldest idle one of any address does.
    ///
    /// # Errors
    /// [`Full`] when the table is full of busy connections.
    pub fn admit(&self, source: IpAddr) -> Result<Admitted, Full> {
        let mut t = self.lock();
        let idle = |c: &Conn| c.busy.load(Ordering::Acquire) == 0;
        let from_source = t
            .open
            .values()
            .filter(|c| c.source == source && idle(c))
            .count();
        let evict = if from_source >= self.per_source {
            t.open
                .iter()
                .find(|(_, c)| c.source == source && idle(c))
                .map(|(id, _)| *id)
        } else if t.open.len() >= self.max {
            Some(
                t.open
                    .iter()
                    .find(|(_, c)| idle(c))
                    .map(|(id, _)| *id)
                    .ok_or(Full { max: self.max })?,
            )
        } else {
            None
        };
        let made_room = evict.is_some();
        if let Some(c) = evict.and_then(|id| t.open.remove(&id)) {
            c.close.cancel();
        }
        let id = t.next_id;
        t.next_id += 1;
        let conn = Arc::new(Conn {
            source,
            busy: AtomicUsize::new(0),
            close: CancellationToken::new(),
        });
        t.open.insert(id, Arc::clone(&conn));
        Ok(Admitted {
            table: self.clone(),
            id,
            conn,
            made_room,
        })
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Admitted {
    /// Fires when this connection was evicted to make room: the owner of
    /// the connection closes it (letting a request inside finish).
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.conn.close.cancelled()
    }

    /// Whether another connection was evicted to admit this one.
    pub fn made_room(&self) -> bool {
        self.made_room
    }

    /// Whether this connection was evicted.
    pub fn is_closed(&self) -> bool {
        self.conn.close.is_cancelled()
    }

    /// Whether a [`Busy`] guard of this connection lives.
    pub fn is_busy(&self) -> bool {
        self.conn.busy.load(Ordering::Acquire) > 0
    }

    /// Marks the connection busy until the guard is dropped.
    pub fn busy(&self) -> Busy {
        self.conn.busy.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(&self.conn))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut t = self.table.lock();
        if t.open
            .get(&self.id)
            .is_some_and(|c| Arc::ptr_eq(c, &self.conn))
        {
            t.open.remove(&self.id);
        }
    }
}

impl Clone for Busy {
    fn clone(&self) -> Self {
        self.0.busy.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(&self.0))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn the_oldest_idle_connection_makes_room_and_busy_ones_stay() {
        let t = ConnTable::new(3, 10);
        let a = t.admit(A).unwrap();
        let b = t.admit(A).unwrap();
        let c = t.admit(A).unwrap();
        let _busy_a = a.busy();
        // Full: the oldest idle (b) is evicted, not the busy a.
        let d = t.admit(A).unwrap();
        assert!(d.made_room() && !c.made_room());
        assert!(!a.is_closed() && b.is_closed() && !c.is_closed());
        assert_eq!(t.len(), 3);
        // b's owner drops it: its place is already taken, nothing changes.
        drop(b);
        assert_eq!(t.len(), 3);
        let _busy_c = c.busy();
        let _busy_d = d.busy();
        assert_eq!(t.admit(A).err(), Some(Full { max: 3 }));
        // A busy guard ends: its connection is idle again, so evictable.
        drop(_busy_d);
        let e = t.admit(A).unwrap();
        assert!(d.is_closed() && !e.is_closed());
        drop((a, c, d, e));
        assert!(t.is_empty());
    }

    #[test]
    fn a_flooding_address_recycles_its_own_places() {
        let t = ConnTable::new(100, 2);
        let b1 = t.admit(B).unwrap();
        let flood: Vec<Admitted> = (0..50).map(|_| t.admit(A).unwrap()).collect();
        // A holds at most 2 idle places; B's connection was never touched.
        assert_eq!(flood.iter().filter(|c| !c.is_closed()).count(), 2);
        assert!(!b1.is_closed());
        assert_eq!(t.len(), 3);
        // Busy connections of A do not count against its idle places.
        let _busy: Vec<Busy> = flood.iter().rev().take(2).map(Admitted::busy).collect();
        let more = t.admit(A).unwrap();
        assert!(!more.made_room());
    }
}
