//! Phrase keys: a page's adjacent word pairs, hashed to 32 bits, for the GIN index that
//! lets a phrase search read only the pages that can hold the phrase
//! (`meeting_pages.phrase_keys`, migrations 0014 and 0015).
//!
//! The GIN index over `search_vector` knows which pages hold every word of a phrase, not
//! where: a phrase of common words ("fiscal year appropriation") has hundreds of thousands
//! of candidate pages at 1M pages, each read to check the positions. A page matches
//! `a <-> b` only if some position p holds `a` and p + 1 holds `b` in its stored vector,
//! so the key of the pair (a, b) is a necessary condition the index can test.
//!
//! The key is PostgreSQL's own `hashtext(a || ' ' || b)` (`hash_bytes`, Bob
//! Jenkins' lookup3 as in `src/common/hashfn.c`), so the server computes the same keys
//! for a query's pairs and, through the trigger, for any page civicload did not write.
//! Lexemes of the `simple` configuration never hold a space, so the separator is
//! unambiguous.

use super::Tsv;

impl Tsv {
    /// The phrase keys of this vector: every pair of lexemes at consecutive stored
    /// positions, hashed, sorted and distinct. Equal to the server's
    /// `civicload_phrase_keys(search_vector)`.
    pub fn phrase_keys(&self) -> Vec<i32> {
        let mut keys = Vec::new();
        self.append_phrase_keys(&mut keys);
        keys
    }

    /// Appends [`Tsv::phrase_keys`] to `out`, with this thread's scratch buffers: no
    /// allocation per page in the load's transform threads.
    pub(crate) fn append_phrase_keys(&self, out: &mut Vec<i32>) {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Scratch> = Default::default();
        }
        SCRATCH.with(|s| self.keys_into(&mut s.borrow_mut(), out));
    }

    fn keys_into(&self, s: &mut Scratch, out: &mut Vec<i32>) {
        // Every (position, lexeme) packed in one u64, sorted: position-major, so the
        // lexemes at p + 1 follow those at p.
        let at = &mut s.at;
        at.clear();
        for (i, e) in self.entries.iter().enumerate() {
            let p = e.pos_start as usize;
            at.extend(
                self.positions[p..p + e.npos as usize]
                    .iter()
                    .map(|&pos| (u64::from(pos) << 32) | i as u64),
            );
        }
        at.sort_unstable();
        let lexeme = |packed: u64| {
            let e = &self.entries[(packed & 0xFFFF_FFFF) as usize];
            &self.lexemes[e.start as usize..e.start as usize + e.len as usize]
        };
        let keys = &mut s.keys;
        keys.clear();
        // `next`: the first entry at a position after the current one's.
        let mut next = 0;
        for i in 0..at.len() {
            let pos = at[i] >> 32;
            while next < at.len() && at[next] >> 32 <= pos {
                next += 1;
            }
            let mut j = next;
            while j < at.len() && at[j] >> 32 == pos + 1 {
                keys.push(pair_key(&mut s.buf, lexeme(at[i]), lexeme(at[j])));
                j += 1;
            }
        }
        keys.sort_unstable();
        keys.dedup();
        out.extend_from_slice(keys);
    }
}

/// Buffers reused from page to page by one thread.
#[derive(Default)]
struct Scratch {
    at: Vec<u64>,
    keys: Vec<i32>,
    buf: Vec<u8>,
}

/// `hashtext(a || ' ' || b)`, with `buf` as scratch space. Sorted as the server sorts
/// `int4` (signed), so the arrays are equal element for element.
fn pair_key(buf: &mut Vec<u8>, a: &[u8], b: &[u8]) -> i32 {
    buf.clear();
    buf.extend_from_slice(a);
    buf.push(b' ');
    buf.extend_from_slice(b);
    hash_bytes(buf) as i32
}

/// Appends the binary COPY field of an `int4[]` (length prefix included).
pub(crate) fn encode_keys_field(keys: &[i32], out: &mut bytes::BytesMut) {
    use bytes::BufMut;
    const INT4_OID: u32 = 23;
    if keys.is_empty() {
        out.put_i32(12);
        out.put_i32(0); // dimensions
        out.put_i32(0); // has nulls
        out.put_u32(INT4_OID);
        return;
    }
    out.put_i32(20 + 8 * keys.len() as i32);
    out.put_i32(1);
    out.put_i32(0);
    out.put_u32(INT4_OID);
    out.put_i32(keys.len() as i32);
    out.put_i32(1); // lower bound
    for &k in keys {
        out.put_i32(4);
        out.put_i32(k);
    }
}

fn rot(x: u32, k: u32) -> u32 {
    x.rotate_left(k)
}

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= rot(*c, 4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= rot(*a, 6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= rot(*b, 8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= rot(*c, 16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= rot(*a, 19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= rot(*b, 4);
    *b = b.wrapping_add(*a);
}

fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(rot(*b, 14));
    *a ^= *c;
    *a = a.wrapping_sub(rot(*c, 11));
    *b ^= *a;
    *b = b.wrapping_sub(rot(*a, 25));
    *c ^= *b;
    *c = c.wrapping_sub(rot(*b, 16));
    *a ^= *c;
    *a = a.wrapping_sub(rot(*c, 4));
    *b ^= *a;
    *b = b.wrapping_sub(rot(*a, 14));
    *c ^= *b;
    *c = c.wrapping_sub(rot(*b, 24));
}

/// PostgreSQL's `hash_bytes` (little-endian words, as on the servers civicload runs on).
fn hash_bytes(k: &[u8]) -> u32 {
    let word = |i: usize| u32::from_le_bytes([k[i], k[i + 1], k[i + 2], k[i + 3]]);
    let init = 0x9e37_79b9u32
        .wrapping_add(k.len() as u32)
        .wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut off = 0;
    let mut len = k.len();
    while len >= 12 {
        a = a.wrapping_add(word(off));
        b = b.wrapping_add(word(off + 4));
        c = c.wrapping_add(word(off + 8));
        mix(&mut a, &mut b, &mut c);
        off += 12;
        len -= 12;
    }
    let byte = |i: usize, shift: u32| (k[off + i] as u32) << shift;
    // The last 11 bytes; the lowest byte of c is reserved for the length.
    if len >= 9 {
        if len >= 11 {
            c = c.wrapping_add(byte(10, 24));
        }
        if len >= 10 {
            c = c.wrapping_add(byte(9, 16));
        }
        c = c.wrapping_add(byte(8, 8));
    }
    if len >= 8 {
        b = b.wrapping_add(word(off + 4));
        a = a.wrapping_add(word(off));
    } else if len >= 4 {
        if len >= 7 {
            b = b.wrapping_add(byte(6, 16));
        }
        if len >= 6 {
            b = b.wrapping_add(byte(5, 8));
        }
        if len >= 5 {
            b = b.wrapping_add(byte(4, 0));
        }
        a = a.wrapping_add(word(off));
    } else {
        if len >= 3 {
            a = a.wrapping_add(byte(2, 16));
        }
        if len >= 2 {
            a = a.wrapping_add(byte(1, 8));
        }
        if len >= 1 {
            a = a.wrapping_add(byte(0, 0));
        }
    }
    finish(&mut a, &mut b, &mut c);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_bytes_matches_postgresql_hashtext() {
        // `SELECT s, hashtext(s)` on PostgreSQL 15 (x86-64), every tail length 0..=12 and
        // a multi-block key.
        let known: [(&str, i32); 11] = [
            ("", -1477818771),
            ("a", 1075015857),
            ("fiscal year", -157174966),
            ("abcdefghijkl", -1586087212),
            ("budget parking", 1590707870),
            ("zürich council", 562967131),
            ("abcdefghijklmnopqrstuvw", -1149376136),
            ("abcdefg", 501636814),
            ("abcdefghi", -92131489),
            ("abcdefghij", 1948051852),
            ("abcdefghijk", -1483803693),
        ];
        for (s, h) in known {
            assert_eq!(hash_bytes(s.as_bytes()) as i32, h, "{s:?}");
        }
    }
}
