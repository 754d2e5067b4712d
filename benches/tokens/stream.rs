//! Seeded observation streams: Zipf-distributed tokens (the shape of real
//! API traffic, a few keys very hot), and the tokens station's input
//! lines (`o TOKEN\n`, see stations/tokens/README.md, "Inputs") packed
//! into payloads of at most a given size.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Zipf(`s`) over ranks `0..n` by inverse CDF (binary search in the
/// cumulative weights `1/(r+1)^s`).
pub struct Zipf {
    cdf: Vec<f64>,
    rng: StdRng,
}

impl Zipf {
    /// `n` ranks, exponent `s`, seeded.
    pub fn new(n: usize, s: f64, seed: u64) -> Self {
        let mut acc = 0.0;
        let cdf = (0..n)
            .map(|r| {
                acc += 1.0 / ((r + 1) as f64).powf(s);
                acc
            })
            .collect();
        Self {
            cdf,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The next rank.
    pub fn sample(&mut self) -> usize {
        let total = *self.cdf.last().expect("n > 0");
        let u = self.rng.random::<f64>() * total;
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }

    /// The generator, for other seeded choices along the stream.
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }
}

/// The token of rank `r`: 26 bytes, as in the station's own fold-rate
/// test (`tok-` and 22 hex digits).
pub fn token(prefix: &str, r: usize) -> String {
    format!("{prefix}{r:022x}")
}

/// A payload of observation lines and how many lines it holds.
#[derive(Clone)]
pub struct Payload {
    /// `o TOKEN\n` lines.
    pub bytes: Vec<u8>,
    /// Observations in it.
    pub lines: u64,
}

/// Packs `tokens` as `o TOKEN\n` lines into payloads of at most
/// `max_bytes` each.
pub fn pack(tokens: impl IntoIterator<Item = String>, max_bytes: usize) -> Vec<Payload> {
    let mut out = Vec::new();
    let mut cur = Payload {
        bytes: Vec::with_capacity(max_bytes),
        lines: 0,
    };
    for t in tokens {
        if cur.bytes.len() + t.len() + 3 > max_bytes && cur.lines > 0 {
            out.push(std::mem::replace(
                &mut cur,
                Payload {
                    bytes: Vec::with_capacity(max_bytes),
                    lines: 0,
                },
            ));
        }
        cur.bytes.extend_from_slice(b"o ");
        cur.bytes.extend_from_slice(t.as_bytes());
        cur.bytes.push(b'\n');
        cur.lines += 1;
    }
    if cur.lines > 0 {
        out.push(cur);
    }
    out
}
