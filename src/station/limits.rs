//! The resource limiter of one station store: linear memory and table
//! elements are capped for the store as a whole, not per memory or table.
//!
//! wasmtime's `StoreLimits` caps each memory on its own; a component can
//! hold many core instances (and, with multi-memory, many memories each),
//! so with it the station's real bound was the cap times the number of
//! memories. Here every memory of the store draws on one budget.

use wasmtime::ResourceLimiter;
use wasmtime::bail;

/// Core instances one store may hold (a Rust station has a handful).
pub const MAX_INSTANCES: usize = 64;
/// Linear memories one store may hold.
pub const MAX_MEMORIES: usize = 16;
/// Tables one store may hold.
pub const MAX_TABLES: usize = 64;
/// Table elements one store may hold, all tables together.
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Limits one store: `memory_bytes` of linear memory in all, at most
/// [`MAX_TABLE_ELEMENTS`] table elements in all. Growing past either
/// traps (an error from the grow), naming what was refused.
#[derive(Debug)]
pub struct StoreBudget {
    memory_max: usize,
    memory_used: usize,
    /// The last growth allowed, taken back if the grow then fails.
    memory_pending: usize,
    table_used: usize,
    table_pending: usize,
}

impl StoreBudget {
    /// A budget of `memory_bytes` of linear memory.
    pub fn new(memory_bytes: usize) -> Self {
        Self {
            memory_max: memory_bytes,
            memory_used: 0,
            memory_pending: 0,
            table_used: 0,
            table_pending: 0,
        }
    }
}

impl ResourceLimiter for StoreBudget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        let total = self.memory_used.saturating_add(grow);
        if total > self.memory_max {
            // `station::classify` files errors with this opening as memory
            // faults (the wording of wasmtime's own limiter).
            bail!(
                "forcing trap when growing memory to {desired} bytes: the station's memories \
                 would hold {total} bytes in all, over its cap of {} bytes",
                self.memory_max
            );
        }
        self.memory_used = total;
        self.memory_pending = grow;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_used -= std::mem::take(&mut self.memory_pending);
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        let total = self.table_used.saturating_add(grow);
        if total > MAX_TABLE_ELEMENTS {
            bail!(
                "forcing trap when growing table to {desired} elements: the station's tables \
                 would hold {total} elements in all, over the cap of {MAX_TABLE_ELEMENTS}"
            );
        }
        self.table_used = total;
        self.table_pending = grow;
        Ok(true)
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.table_used -= std::mem::take(&mut self.table_pending);
        Ok(())
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 64 << 10;

    #[test]
    fn memories_share_one_cap() {
        let mut b = StoreBudget::new(4 * PAGE);
        // Two memories of two pages each fill the cap…
        assert!(b.memory_growing(0, 2 * PAGE, None).unwrap());
        assert!(b.memory_growing(0, 2 * PAGE, None).unwrap());
        // …and a third memory, or growing either, is refused, though each
        // memory alone is under the cap.
        let e = b.memory_growing(0, PAGE, None).unwrap_err().to_string();
        assert!(e.starts_with("forcing trap when growing memory"), "{e}");
        assert!(e.contains("over its cap of 262144 bytes"), "{e}");
        assert!(b.memory_growing(2 * PAGE, 3 * PAGE, None).is_err());
    }

    #[test]
    fn a_failed_grow_gives_its_share_back() {
        let mut b = StoreBudget::new(2 * PAGE);
        assert!(b.memory_growing(0, 2 * PAGE, None).unwrap());
        b.memory_grow_failed(wasmtime::Error::msg("no")).unwrap();
        assert!(b.memory_growing(0, 2 * PAGE, None).unwrap());
    }

    #[test]
    fn tables_share_one_cap() {
        let mut b = StoreBudget::new(PAGE);
        assert!(b.table_growing(0, MAX_TABLE_ELEMENTS - 1, None).unwrap());
        assert!(b.table_growing(0, 1, None).unwrap());
        assert!(b.table_growing(1, 2, None).is_err());
    }
}
