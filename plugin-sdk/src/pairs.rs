//! The proxy-wasm ABI's encoding of a header map, for both sides of the ABI: the SDK's
//! guest side reads and writes maps with it, and Weir's host uses the same functions.
//! A u32 count, then a (name length, value length) u32 pair per entry, then each name
//! and each value followed by a NUL; all little-endian.

/// `(name, value)` byte pairs, in map order (names and values may be any bytes).
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The encoding of `pairs`.
pub fn serialize<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let count = pairs.clone().count();
    let data: usize = pairs.clone().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + count * 8 + data);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The pairs of an encoded map; `None` when the bytes do not hold what they claim (a
/// length past the end, a missing NUL, a count the bytes cannot hold).
pub fn deserialize(bytes: &[u8]) -> Option<Pairs> {
    let u32_at = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?) as usize)
    };
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = u32_at(0)?;
    // Every pair needs at least 10 bytes (two sizes, two NULs): reject absurd counts
    // before allocating for them.
    if count > bytes.len() / 10 + 1 {
        return None;
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + count * 8;
    let mut out = Vec::with_capacity(count);
    // Reads `len` bytes at `at` and the NUL after them.
    let mut field = |len: usize| -> Option<Vec<u8>> {
        let end = at.checked_add(len)?;
        let field = bytes.get(at..end)?.to_vec();
        if bytes.get(end) != Some(&0) {
            return None;
        }
        at = end + 1;
        Some(field)
    };
    for (klen, vlen) in sizes {
        let key = field(klen)?;
        let value = field(vlen)?;
        out.push((key, value));
    }
    Some(out)
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
        let bytes = serialize(pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
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
        assert_eq!(deserialize(&serialize(std::iter::empty())), Some(vec![]));
    }

    #[test]
    fn malformed_maps_are_none_not_a_panic() {
        let good = serialize([(&b"name"[..], &b"value"[..])].into_iter());
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
