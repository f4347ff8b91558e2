//! QEMU's XBZRLE page encoding (`migration/xbzrle.c`): the XOR of the old
//! and the new page as alternating zero runs and non-zero runs,
//!
//! ```text
//! page  := zrun nzrun | zrun nzrun page
//! zrun  := length                  (bytes equal to the old page)
//! nzrun := length byte[length]     (the new page's bytes)
//! length := ULEB128, at most 2 bytes (values < 2^14)
//! ```
//!
//! A trailing zero run is not encoded. Only the first zero run may be
//! empty; a non-zero run never is.

use super::super::host::PAGE_SIZE;

/// Largest encoded page accepted and produced (QEMU's `dlen`, one page):
/// an encoding that does not fit is an overflow and the page goes whole.
pub const MAX_ENCODED: usize = PAGE_SIZE;

/// Result of [`encode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded {
    /// The page did not change: nothing is sent (QEMU skips it).
    Unchanged,
    /// `dst[..n]` holds the encoding.
    Delta(usize),
    /// The encoding would not fit in [`MAX_ENCODED`] bytes.
    Overflow,
}

/// Writes `n` (< 2^14) as ULEB128 at `dst[d..]`, returns the new `d`.
fn put_uleb(dst: &mut [u8], d: usize, n: usize) -> usize {
    debug_assert!(n <= 0x3fff);
    if n < 0x80 {
        dst[d] = n as u8;
        d + 1
    } else {
        dst[d] = (n & 0x7f) as u8 | 0x80;
        dst[d + 1] = (n >> 7) as u8;
        d + 2
    }
}

/// Length of the run starting at `i` of bytes that are equal (`equal`) or
/// differ between `a` and `b`; whole 8-byte words at a time while possible.
fn run_len(a: &[u8], b: &[u8], i: usize, equal: bool) -> usize {
    let mut j = i;
    while j + 8 <= a.len() {
        let same = a[j..j + 8] == b[j..j + 8];
        if equal && !same || !equal && a[j..j + 8].iter().zip(&b[j..j + 8]).any(|(x, y)| x == y) {
            break;
        }
        j += 8;
    }
    while j < a.len() && (a[j] == b[j]) == equal {
        j += 1;
    }
    j - i
}

/// QEMU's `xbzrle_encode_buffer(old, new, PAGE_SIZE, dst, dst.len())`.
pub fn encode(old: &[u8; PAGE_SIZE], new: &[u8; PAGE_SIZE], dst: &mut [u8]) -> Encoded {
    let dlen = dst.len();
    let (mut d, mut i) = (0usize, 0usize);
    while i < PAGE_SIZE {
        if d + 2 > dlen {
            return Encoded::Overflow;
        }
        let zrun = run_len(old, new, i, true);
        i += zrun;
        if zrun == PAGE_SIZE {
            return Encoded::Unchanged;
        }
        if i == PAGE_SIZE {
            break;
        }
        d = put_uleb(dst, d, zrun);
        if d + 2 > dlen {
            return Encoded::Overflow;
        }
        let nzrun = run_len(old, new, i, false);
        d = put_uleb(dst, d, nzrun);
        if d + nzrun > dlen {
            return Encoded::Overflow;
        }
        dst[d..d + nzrun].copy_from_slice(&new[i..i + nzrun]);
        d += nzrun;
        i += nzrun;
    }
    Encoded::Delta(d)
}

/// Most non-zero words a page may hold to be sent as a SPARSE record.
pub const SPARSE_WORDS: usize = 16;
/// Longest encoding [`encode_sparse`] writes: every word its own run
/// (a zero run of up to 2 bytes, a data run length, 8 bytes).
pub const SPARSE_MAX_ENCODED: usize = SPARSE_WORDS * 11;

/// A page that is zero but for `words` (`(word index, value)`, indices
/// increasing, values non-zero, at most [`SPARSE_WORDS`]) encoded as its
/// XBZRLE delta against an all-zero page into `dst`; returns the length.
/// Consecutive words form one run; zero bytes at a run's ends are left to
/// the zero runs. `words` must not be empty.
pub fn encode_sparse(words: &[(u16, u64)], dst: &mut [u8; SPARSE_MAX_ENCODED]) -> usize {
    debug_assert!(!words.is_empty() && words.len() <= SPARSE_WORDS);
    let (mut d, mut end) = (0usize, 0usize);
    let mut i = 0;
    while i < words.len() {
        let mut j = i + 1;
        while j < words.len() && words[j].0 == words[j - 1].0 + 1 {
            j += 1;
        }
        // Bytes of words[i..j] in memory order, trimmed of zero bytes.
        let first = words[i].0 as usize * 8;
        let lead = first_nonzero(words[i].1);
        let tail = 8 - last_nonzero(words[j - 1].1) - 1;
        let start = first + lead;
        let len = (j - i) * 8 - lead - tail;
        d = put_uleb(dst, d, start - end);
        d = put_uleb(dst, d, len);
        let mut k = 0;
        for (_, w) in &words[i..j] {
            for b in w.to_ne_bytes() {
                if k >= lead && k < lead + len {
                    dst[d] = b;
                    d += 1;
                }
                k += 1;
            }
        }
        end = start + len;
        i = j;
    }
    d
}

/// Index in memory order of a non-zero word's first non-zero byte.
fn first_nonzero(w: u64) -> usize {
    w.to_ne_bytes().iter().position(|b| *b != 0).unwrap_or(0)
}

/// Index in memory order of a non-zero word's last non-zero byte.
fn last_nonzero(w: u64) -> usize {
    w.to_ne_bytes().iter().rposition(|b| *b != 0).unwrap_or(7)
}

/// The page a valid SPARSE encoding stands for: zero but for its runs.
pub fn decode_sparse(enc: &[u8]) -> Result<Box<[u8; PAGE_SIZE]>, DecodeError> {
    let mut page = Box::new([0u8; PAGE_SIZE]);
    decode(enc, &mut page)?;
    Ok(page)
}

/// Why an encoded page is malformed, and at which byte of the encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset in the encoded data.
    pub at: usize,
    /// What is wrong.
    pub reason: String,
}

/// Reads a length at `enc[i..]`: 1 or 2 bytes, minimal (QEMU's encoder
/// writes nothing else).
fn get_uleb(enc: &[u8], i: usize, what: &str) -> Result<(usize, usize), DecodeError> {
    let err = |reason: String| DecodeError { at: i, reason };
    let b0 = *enc
        .get(i)
        .ok_or_else(|| err(format!("{what} length missing")))?;
    if b0 & 0x80 == 0 {
        return Ok((b0 as usize, i + 1));
    }
    let b1 = *enc
        .get(i + 1)
        .ok_or_else(|| err(format!("{what} length cut short")))?;
    if b1 & 0x80 != 0 {
        return Err(err(format!("{what} length longer than 2 bytes")));
    }
    if b1 == 0 {
        return Err(err(format!("{what} length not minimally encoded")));
    }
    Ok(((b0 & 0x7f) as usize | (b1 as usize) << 7, i + 2))
}

/// Checks an encoded page and calls `run(offset, bytes)` for every
/// non-zero run, in order (QEMU's `xbzrle_decode_buffer` rules, plus
/// minimal lengths). Nothing is called unless the whole encoding is valid.
pub fn walk<'a>(enc: &'a [u8], mut run: impl FnMut(usize, &'a [u8])) -> Result<(), DecodeError> {
    let mut runs = Vec::new();
    let (mut i, mut d) = (0usize, 0usize);
    if enc.is_empty() || enc.len() > MAX_ENCODED {
        return Err(DecodeError {
            at: 0,
            reason: format!("length {} outside 1..={MAX_ENCODED}", enc.len()),
        });
    }
    while i < enc.len() {
        let at = i;
        let (zrun, next) = get_uleb(enc, i, "zero run")?;
        if at > 0 && zrun == 0 {
            return Err(DecodeError {
                at,
                reason: "empty zero run after the first".into(),
            });
        }
        i = next;
        if d + zrun > PAGE_SIZE {
            return Err(DecodeError {
                at,
                reason: format!(
                    "zero run of {zrun} bytes at page byte {d} ends past the page ({PAGE_SIZE} bytes)"
                ),
            });
        }
        d += zrun;
        let at = i;
        let (nzrun, next) = get_uleb(enc, i, "data run")?;
        if nzrun == 0 {
            return Err(DecodeError {
                at,
                reason: "empty data run".into(),
            });
        }
        i = next;
        if d + nzrun > PAGE_SIZE {
            return Err(DecodeError {
                at,
                reason: format!(
                    "data run of {nzrun} bytes at page byte {d} ends past the page ({PAGE_SIZE} bytes)"
                ),
            });
        }
        if i + nzrun > enc.len() {
            return Err(DecodeError {
                at,
                reason: format!(
                    "data run of {nzrun} bytes has only {} bytes left in the record",
                    enc.len() - i
                ),
            });
        }
        runs.push((d, i, nzrun));
        d += nzrun;
        i += nzrun;
    }
    for (d, i, n) in runs {
        run(d, &enc[i..i + n]);
    }
    Ok(())
}

/// Applies a valid encoding to `page` (the destination's current copy,
/// which must be what the source encoded against).
pub fn decode(enc: &[u8], page: &mut [u8; PAGE_SIZE]) -> Result<(), DecodeError> {
    walk(enc, |d, bytes| {
        page[d..d + bytes.len()].copy_from_slice(bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn page(f: impl Fn(usize) -> u8) -> Box<[u8; PAGE_SIZE]> {
        let mut p = Box::new([0u8; PAGE_SIZE]);
        for (i, b) in p.iter_mut().enumerate() {
            *b = f(i);
        }
        p
    }

    fn enc(old: &[u8; PAGE_SIZE], new: &[u8; PAGE_SIZE]) -> (Encoded, Vec<u8>) {
        let mut dst = vec![0u8; MAX_ENCODED];
        let r = encode(old, new, &mut dst);
        if let Encoded::Delta(n) = r {
            dst.truncate(n);
        }
        (r, dst)
    }

    /// The non-zero words of a page, as `page_sparse_words` gives them.
    fn words_of(p: &[u8; PAGE_SIZE]) -> Vec<(u16, u64)> {
        p.chunks_exact(8)
            .enumerate()
            .map(|(i, c)| (i as u16, u64::from_ne_bytes(c.try_into().unwrap())))
            .filter(|(_, w)| *w != 0)
            .collect()
    }

    #[test]
    fn sparse_encoding_decodes_onto_a_zero_page() {
        let zero = [0u8; PAGE_SIZE];
        let mut cases: Vec<Box<[u8; PAGE_SIZE]>> = vec![
            page(|i| u8::from(i == 0)),
            page(|i| u8::from(i == PAGE_SIZE - 1) * 0xff),
            page(|i| if (8..24).contains(&i) { 0x5a } else { 0 }),
            page(|i| u8::from(i % 8 == 3 && i < 8 * 64 && (i / 8) % 2 == 0)),
            page(|i| if i % 512 == 7 || i % 512 == 8 { 1 } else { 0 }),
        ];
        // A seeded walk over random sparse pages, words touching or not.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..500 {
            let mut p = Box::new([0u8; PAGE_SIZE]);
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p[(x % PAGE_SIZE as u64) as usize] = (x >> 32) as u8;
            }
            cases.push(p);
        }
        for p in cases {
            let words = words_of(&p);
            if words.is_empty() || words.len() > SPARSE_WORDS {
                continue;
            }
            let mut dst = [0u8; SPARSE_MAX_ENCODED];
            let n = encode_sparse(&words, &mut dst);
            let mut out = zero;
            decode(&dst[..n], &mut out).expect("valid encoding");
            assert_eq!(out[..], p[..]);
            assert!(n <= 11 * words.len());
        }
    }

    #[test]
    fn known_encodings() {
        let old = page(|_| 0);
        assert_eq!(enc(&old, &old).0, Encoded::Unchanged);
        // One byte changed at offset 0: empty first zero run, one data byte.
        let new = page(|i| (i == 0) as u8 * 7);
        assert_eq!(enc(&old, &new), (Encoded::Delta(3), vec![0, 1, 7]));
        // Bytes 200..202 changed: zero run 200 (2-byte length), run of 2.
        let new = page(|i| if (200..202).contains(&i) { 9 } else { 0 });
        assert_eq!(
            enc(&old, &new),
            (Encoded::Delta(5), vec![0xc8, 0x01, 2, 9, 9])
        );
        // Every byte changed: 3 + 4096 bytes do not fit in a page.
        let new = page(|_| 1);
        assert_eq!(enc(&old, &new).0, Encoded::Overflow);
        // Every other byte changed: overflows too.
        let new = page(|i| (i % 2) as u8);
        assert_eq!(enc(&old, &new).0, Encoded::Overflow);
    }

    #[test]
    fn malformed_encodings_are_refused() {
        let cases: &[(&[u8], usize, &str)] = &[
            (&[], 0, "length 0 outside 1..=4096"),
            (&[5], 1, "data run length missing"),
            (&[0x80], 0, "zero run length cut short"),
            (&[0x80, 0x80, 1], 0, "zero run length longer than 2 bytes"),
            (
                &[0x80, 0x00, 1, 1],
                0,
                "zero run length not minimally encoded",
            ),
            (&[0, 0], 1, "empty data run"),
            (&[0, 1, 5, 0, 1, 5], 3, "empty zero run after the first"),
            (
                &[0xff, 0x7f, 1, 1],
                0,
                "zero run of 16383 bytes at page byte 0 ends past the page",
            ),
            (
                &[0xff, 0x1f, 2, 1, 1],
                2,
                "data run of 2 bytes at page byte 4095 ends past the page",
            ),
            (
                &[0, 3, 1, 2],
                1,
                "data run of 3 bytes has only 2 bytes left in the record",
            ),
        ];
        for (e, at, text) in cases {
            let mut p = [0u8; PAGE_SIZE];
            let err = decode(e, &mut p).unwrap_err();
            assert_eq!(err.at, *at, "{e:?}: {err:?}");
            assert!(err.reason.contains(text), "{e:?}: {err:?}");
            assert!(p.iter().all(|b| *b == 0), "a refused encoding wrote");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Decoding an encoding against the old page gives the new page;
        /// an overflow means QEMU's bound was exceeded.
        #[test]
        fn decode_inverts_encode(
            seed in any::<u64>(),
            changes in proptest::collection::vec((0usize..PAGE_SIZE, 1usize..64, any::<u8>()), 0..40),
        ) {
            let old = page(|i| (i as u64).wrapping_mul(seed | 1).to_le_bytes()[3]);
            let mut new = old.clone();
            for (at, len, v) in changes {
                for b in new[at..(at + len).min(PAGE_SIZE)].iter_mut() {
                    *b = b.wrapping_add(v | 1);
                }
            }
            match enc(&old, &new) {
                (Encoded::Unchanged, _) => prop_assert_eq!(&old, &new),
                (Encoded::Delta(n), bytes) => {
                    prop_assert!(n <= MAX_ENCODED);
                    let mut p = old.clone();
                    decode(&bytes, &mut p).unwrap();
                    prop_assert_eq!(&p, &new);
                }
                (Encoded::Overflow, _) => {
                    let diff = old.iter().zip(new.iter()).filter(|(a, b)| a != b).count();
                    prop_assert!(diff >= MAX_ENCODED / 3 - 2);
                }
            }
        }
    }
}
