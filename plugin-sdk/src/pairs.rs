//! The proxy-wasm encoding of a header map: a u32 count, then a (name length, value
//! length) u32 pair per entry, then each name and each value followed by a NUL; all
//! little-endian. Used by the ABI layer in wasm; tested natively.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

/// `(name, value)` byte pairs, in map order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The pairs of an encoded map; `None` when it is malformed (a length past the end).
pub fn deserialize(bytes: &[u8]) -> Option<Pairs> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let n = u32_at(0)?;
    let mut data = n.checked_mul(8)?.checked_add(4)?;
    // Bounded by the input, not by the count it claims.
    let mut pairs = Vec::with_capacity(n.min(bytes.len() / 10));
    for i in 0..n {
        let (name_len, value_len) = (u32_at(4 + i * 8)?, u32_at(8 + i * 8)?);
        let name = bytes.get(data..data.checked_add(name_len)?)?.to_vec();
        data = data.checked_add(name_len + 1)?;
        let value = bytes.get(data..data.checked_add(value_len)?)?.to_vec();
        data = data.checked_add(value_len + 1)?;
        pairs.push((name, value));
    }
    Some(pairs)
}

/// The encoding of `pairs`.
pub fn serialize(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = pairs
        .iter()
        .map(|(n, v)| n.len() + v.len() + 10)
        .sum::<usize>()
        + 4;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_the_wire_bytes() {
        let pairs = [
            (":status", "401"),
            ("content-type", "application/json"),
            ("x", ""),
        ];
        let bytes = serialize(&pairs);
        assert_eq!(&bytes[..12], &[3, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(&bytes[28..41], b":status\x00401\x00c");
        let back = deserialize(&bytes).unwrap();
        let back: Vec<(&[u8], &[u8])> = back.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        let want: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        assert_eq!(back, want);
        assert_eq!(deserialize(&[]), Some(vec![]));
        assert_eq!(deserialize(&serialize(&[])), Some(vec![]));
    }

    #[test]
    fn malformed_maps_are_none_not_a_panic() {
        let good = serialize(&[("name", "value")]);
        for cut in 1..good.len() - 1 {
            assert_eq!(deserialize(&good[..cut]), None, "cut at {cut}");
        }
        // A count far beyond the bytes, and lengths that overflow.
        assert_eq!(deserialize(&[255, 255, 255, 255]), None);
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(deserialize(&huge), None);
    }
}
