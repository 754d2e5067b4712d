//! The spin station's logic: a busy loop the optimizer cannot remove.

use core::hint::black_box;

/// Spins `limit` iterations, or forever when `limit` is `None`; returns the
/// number of iterations made. Every iteration goes through `black_box`, so
/// the loop is neither removed nor collapsed into a closed form.
pub fn spin(limit: Option<u64>) -> u64 {
    let mut n: u64 = 0;
    loop {
        if let Some(limit) = black_box(limit) {
            if n >= limit {
                return n;
            }
        }
        n = black_box(n).wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_spin_counts() {
        assert_eq!(spin(Some(0)), 0);
        assert_eq!(spin(Some(100_000)), 100_000);
    }
}
