//! Encoding helpers for small slots and kv values.

/// Decodes a `u64` stored little-endian in 8 bytes; an empty value is 0.
///
/// The error reads `"<what> is N bytes, expected 0 or 8"`, e.g. with
/// `what = "slot"`: `"slot is 3 bytes, expected 0 or 8"`.
pub fn decode_u64(what: &str, bytes: &[u8]) -> Result<u64, String> {
    match bytes.len() {
        0 => Ok(0),
        8 => {
            let mut le = [0u8; 8];
            le.copy_from_slice(bytes);
            Ok(u64::from_le_bytes(le))
        }
        n => Err(format!("{what} is {n} bytes, expected 0 or 8")),
    }
}

/// Encodes a `u64` as 8 little-endian bytes.
pub fn encode_u64(value: u64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for v in [0, 1, 255, 256, u64::MAX] {
            assert_eq!(decode_u64("slot", &encode_u64(v)), Ok(v));
        }
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(decode_u64("slot", &[]), Ok(0));
    }

    #[test]
    fn little_endian() {
        assert_eq!(encode_u64(0x0102), vec![2, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn wrong_length() {
        assert_eq!(
            decode_u64("slot", &[1, 2, 3]),
            Err("slot is 3 bytes, expected 0 or 8".to_string())
        );
        assert_eq!(
            decode_u64("kv value \"count\"", &[0; 9]),
            Err("kv value \"count\" is 9 bytes, expected 0 or 8".to_string())
        );
    }
}
