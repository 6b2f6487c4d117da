//! Search vectors computed in civicload, identical to the server's own
//! `civicload_page_vector(text)` = `to_tsvector('simple', unaccent(coalesce(text, '')))`.
//!
//! PostgreSQL spends about 200 µs of one core per 2.4 KB page on that expression, which
//! dominates a bulk load. [`VectorBuilder`] reproduces it in Rust so the load can send
//! finished vectors (binary COPY) instead of asking the server to compute them.
//!
//! # What is reproduced, and from where
//! The pipeline PostgreSQL runs, step by step, and its Rust counterpart:
//! 1. `unaccent`: a per-character replacement (`unaccent.rules`). Read from the server by
//!    running its `unaccent()` over every code point (`probe.rs`).
//! 2. The `default` parser (`wparser_def.c`): ported table for table in `parser.rs`. Its
//!    character classes (`iswalpha`, `iswdigit`, `iswspace`, `iswxdigit` under the
//!    database's LC_CTYPE, and `p_isspecial`: zero-width or spacing-mark characters that
//!    join words) are read from the server by parsing probe strings with its `ts_parse`.
//! 3. `parsetext` (`ts_parse.c`): tokens of 2047 bytes or more are dropped without taking a
//!    position; token types the configuration does not map take no position either; each
//!    mapped token takes the next position.
//! 4. The `simple` dictionary (`dict_simple.c`): lowercases with `towlower` per character
//!    (`lowerstr`), no stop words, accepts everything. The case table is read by running
//!    the server's own `ts_lexize('simple', ...)` over every code point. The configuration
//!    map (`pg_ts_config_map`) says which token types are indexed.
//! 5. `make_tsvector`/`uniqueWORD` (`to_tsany.c`): lexemes sorted by bytes (memcmp, a
//!    prefix first), duplicates merged, positions capped at 16383 (`LIMITPOS`), at most
//!    255 positions kept per lexeme, a position equal to the previous one or following
//!    16383 dropped.
//! 6. Output: `tsvectorout` (text: `'lexeme':1,5`, quotes and backslashes doubled) and
//!    `tsvectorsend` (binary: count, then lexeme + NUL, position count, positions).
//!
//! Before returning, [`VectorBuilder::from_server`] also compares its own result with the
//! server's on a built-in set of tricky texts and refuses to build on any difference.
//!
//! # When [`VectorBuilder::vector`] returns `None` (the caller lets PostgreSQL compute)
//! - the text contains U+0000: PostgreSQL text cannot hold it, so the server must decide;
//! - a character the probes could not classify with certainty (a non-ASCII character the
//!   server calls a digit: the probes cannot then tell its other classes apart);
//! - a lexeme over 2047 bytes after lowercasing (a 2046-byte token whose lowercase is
//!   longer): PostgreSQL's 11-bit length field would silently wrap;
//! - the vector would exceed 1 MB (`MAXSTRPOS`): PostgreSQL raises an error for that page,
//!   which must stay PostgreSQL's behaviour.
//!
//! # What makes the builder refuse (an error from `from_server`)
//! A server major version the differential test has not verified, an encoding other than
//! UTF8, a `civicload_page_vector` other than the one above, a parser that is not the
//! `default` one, a configuration mapping to anything but a plain `simple` dictionary (stop
//! words, other dictionaries), an unaccent rules file with multi-character sources (when
//! the file is readable), or any disagreement on the built-in sample. The caller then
//! leaves vectors to PostgreSQL, as before.
//!
//! # Using it
//! Build one [`VectorBuilder`] per process (it is `Send + Sync`; share it in an `Arc`),
//! call [`VectorBuilder::vector`] per page and write the result into the binary COPY row
//! with [`Tsv::encode_copy_field`]; for `None`, write a NULL vector and let the server
//! fill it (`vectorize`, or the row trigger outside bulk mode). Note that the row trigger
//! as migrated recomputes the vector on every INSERT outside bulk mode, and in bulk mode
//! sets it to NULL when an UPDATE changes the text: a vector sent by the client survives
//! only where the trigger leaves it alone.
//!
//! # Cost
//! `benches/tsvector.rs` measures both sides in CPU time on generated pages: about 25 µs
//! per 2.2 KB page here against about 175 µs for PostgreSQL's own expression (on a
//! loaded 2-core machine; see the bench output for the current ratio). Reading the rules
//! takes a few seconds, once.

mod parser;
mod phrase;
pub(crate) use phrase::encode_keys_field;
mod probe;

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use sqlx::PgPool;
use tracing::info;

use parser::{class, Ch, Dispatch, Parser};
pub use probe::{Coverage, VERIFIED_MAJOR_VERSIONS};

/// Tokens of this many bytes or more are skipped (`MAXSTRLEN` = 2^11 - 1, `lenlemm >=
/// MAXSTRLEN` in `parsetext`); it is also the longest lexeme a tsvector can store.
const MAXSTRLEN: usize = (1 << 11) - 1;
/// The largest tsvector lexeme area (`MAXSTRPOS`).
const MAXSTRPOS: usize = (1 << 20) - 1;
/// Positions are capped here (`MAXENTRYPOS - 1`).
const MAX_POSITION: u32 = (1 << 14) - 1;
/// At most this many positions are kept per lexeme (`MAXNUMPOS - 1`).
const MAX_POSITIONS_PER_LEXEME: usize = 256 - 1;

/// Why the server's search-vector rules could not be read or reproduced.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error("reading the server's text-search rules failed while {step}: {source}. Is the database reachable and migrated (civicload creates the unaccent extension)?")]
    Sql {
        step: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("civicload cannot reproduce this server's search vectors ({0}); PostgreSQL keeps computing them, which is correct but slower")]
    Unsupported(String),
    #[error("civicload's search vector for {text:?} differs from the server's (server {server}, civicload {ours}); PostgreSQL keeps computing vectors. Please report this text")]
    Mismatch {
        text: String,
        server: String,
        ours: String,
    },
}

impl VectorError {
    /// A lost connection: worth trying again. Every other error is a property of the server.
    pub fn is_transient(&self) -> bool {
        match self {
            VectorError::Sql { source, .. } => crate::store::sql::is_transient_sql(source),
            _ => false,
        }
    }
}

/// What the builder read from the server, for the log and the report.
#[derive(Clone, Debug, Default)]
pub struct RulesSummary {
    /// `server_version`.
    pub server_version: String,
    /// The database's LC_CTYPE.
    pub lc_ctype: String,
    /// Code points the unaccent dictionary replaces.
    pub unaccent_rules: usize,
    /// Whether the unaccent rules file itself was read (checks single-character sources).
    pub rules_file_checked: bool,
    /// Code points the `simple` dictionary lowercases to another code point.
    pub lowercase_mappings: usize,
    /// Non-ASCII code points the parser treats as letters.
    pub letters: usize,
    /// Non-ASCII code points that join words without being letters (`p_isspecial`).
    pub word_joiners: usize,
    /// Non-ASCII code points the parser treats as spaces.
    pub spaces: usize,
    /// Code points left to the server (a text containing one gets `None`).
    pub unverified: usize,
    /// Token types the `simple` configuration indexes.
    pub indexed_token_types: Vec<&'static str>,
    /// Time spent reading the rules (once per process).
    pub elapsed: Duration,
}

impl fmt::Display for RulesSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PostgreSQL {} (LC_CTYPE {}): {} unaccent rules{}, {} lowercase mappings, {} letters, {} word joiners, {} spaces beyond ASCII, {} code points left to the server; read in {:.1} s",
            self.server_version,
            self.lc_ctype,
            self.unaccent_rules,
            if self.rules_file_checked { " (file checked)" } else { "" },
            self.lowercase_mappings,
            self.letters,
            self.word_joiners,
            self.spaces,
            self.unverified,
            self.elapsed.as_secs_f64()
        )
    }
}

/// The per-character rules of one server, as read by `probe.rs`.
pub(crate) struct Rules {
    /// Class bits of ASCII characters.
    ascii_class: [u8; 128],
    /// Class bits of U+0080..U+FFFF (surrogates: unused).
    bmp_class: Box<[u8]>,
    /// Class bits of U+10000 and above, as sorted inclusive ranges; a code point in no
    /// range is unverified.
    astral_class: Vec<(u32, u32, u8)>,
    /// Lowercase of each ASCII byte.
    ascii_lower: [u8; 128],
    /// Non-ASCII lowercase mappings that change the character, sorted.
    lower: Vec<(u32, u32)>,
    /// Unaccent replacements, sorted by code point; the replacement text is a range of
    /// `unaccent_text`.
    unaccent: Vec<(u32, u32, u32)>,
    unaccent_text: String,
    /// Whether any ASCII character has an unaccent rule (none in the stock file).
    unaccent_ascii: bool,
    /// Token types the configuration indexes.
    indexed: [bool; parser::tok::LAST as usize + 1],
    /// The parser's first-match table for these classes.
    dispatch: Dispatch,
}

impl Rules {
    #[inline]
    fn class(&self, c: char) -> u8 {
        let cp = c as u32;
        if cp < 0x80 {
            self.ascii_class[cp as usize]
        } else if cp <= 0xFFFF {
            self.bmp_class[cp as usize]
        } else {
            match self.astral_range(cp) {
                Some(i) => self.astral_class[i].2,
                None => class::UNVERIFIED,
            }
        }
    }

    /// The range of `astral_class` holding `cp`, if the probes asked about it.
    fn astral_range(&self, cp: u32) -> Option<usize> {
        self.astral_class
            .binary_search_by(|&(lo, hi, _)| {
                if hi < cp {
                    std::cmp::Ordering::Less
                } else if lo > cp {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .ok()
    }

    /// Whether the probes asked about `c` (see [`Coverage`]).
    fn probed(&self, c: char) -> bool {
        (c as u32) <= 0xFFFF || self.astral_range(c as u32).is_some()
    }

    #[inline]
    fn unaccent_of(&self, c: char) -> Option<&str> {
        let cp = c as u32;
        self.unaccent
            .binary_search_by_key(&cp, |&(k, _, _)| k)
            .ok()
            .map(|i| {
                let (_, start, end) = self.unaccent[i];
                &self.unaccent_text[start as usize..end as usize]
            })
    }

    /// `unaccent()` of the whole text: borrowed when nothing changes (the common case).
    fn unaccent<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if self.unaccent_ascii {
            // Not the stock rules: every character may change.
            if !text.chars().any(|c| self.unaccent_of(c).is_some()) {
                return Cow::Borrowed(text);
            }
            let mut out = String::with_capacity(text.len() + 16);
            for c in text.chars() {
                match self.unaccent_of(c) {
                    Some(r) => out.push_str(r),
                    None => out.push(c),
                }
            }
            return Cow::Owned(out);
        }
        // Only non-ASCII characters have rules: look at those alone, copy ASCII runs.
        let bytes = text.as_bytes();
        let mut out: Option<String> = None;
        let mut copied = 0;
        let mut i = 0;
        while let Some(k) = bytes[i..].iter().position(|&b| b >= 0x80) {
            i += k;
            let c = text[i..].chars().next().expect("a char starts here");
            if let Some(r) = self.unaccent_of(c) {
                let o = out.get_or_insert_with(|| String::with_capacity(text.len() + 16));
                o.push_str(&text[copied..i]);
                o.push_str(r);
                copied = i + c.len_utf8();
            }
            i += c.len_utf8();
        }
        match out {
            None => Cow::Borrowed(text),
            Some(mut o) => {
                o.push_str(&text[copied..]);
                Cow::Owned(o)
            }
        }
    }

    /// `lowerstr`: `towlower` per character, appended as UTF-8.
    #[inline]
    fn push_lower(&self, token: &str, out: &mut Vec<u8>) {
        if token.is_ascii() {
            out.extend(token.bytes().map(|b| self.ascii_lower[b as usize]));
            return;
        }
        let mut utf8 = [0u8; 4];
        for c in token.chars() {
            let cp = c as u32;
            if cp < 0x80 {
                out.push(self.ascii_lower[cp as usize]);
            } else {
                let l = match self.lower.binary_search_by_key(&cp, |&(k, _)| k) {
                    Ok(i) => char::from_u32(self.lower[i].1).unwrap_or(c),
                    Err(_) => c,
                };
                out.extend_from_slice(l.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

/// Builds search vectors exactly as the target server would; see the module docs.
pub struct VectorBuilder {
    rules: Rules,
    summary: RulesSummary,
    beyond: Beyond,
}

/// Whether a text held a code point the probes did not ask about, so that a caller can
/// read wider rules only when its texts need them ([`VectorBuilder::beyond_coverage`]).
#[derive(Default)]
struct Beyond {
    seen: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Beyond {
    fn note(&self) {
        use std::sync::atomic::Ordering;
        if !self.seen.load(Ordering::Relaxed) && !self.seen.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }
}

impl fmt::Debug for VectorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VectorBuilder")
            .field("summary", &self.summary)
            .finish()
    }
}

impl VectorBuilder {
    /// Reads the target server's rules (unaccent, character classes, lowercasing, the
    /// `simple` configuration) and proves the result on a built-in sample. Runs once per
    /// process; takes a few seconds (see [`RulesSummary::elapsed`]).
    pub async fn from_server(pool: &PgPool) -> Result<VectorBuilder, VectorError> {
        Self::from_server_covering(pool, Coverage::Assigned).await
    }

    /// `from_server`, asking only about the code points `coverage` names: a text with any
    /// other code point gets `None` (the server computes its vector).
    pub async fn from_server_covering(
        pool: &PgPool,
        coverage: Coverage,
    ) -> Result<VectorBuilder, VectorError> {
        let started = std::time::Instant::now();
        let (rules, mut summary) = probe::read_rules(pool, coverage).await?;
        let builder = VectorBuilder {
            rules,
            summary: RulesSummary::default(),
            beyond: Beyond::default(),
        };
        probe::self_check(pool, &builder).await?;
        summary.elapsed = started.elapsed();
        info!(summary = %summary, "Read the server's text-search rules; civicload computes search vectors itself.");
        Ok(VectorBuilder { summary, ..builder })
    }

    /// What was read from the server.
    pub fn summary(&self) -> &RulesSummary {
        &self.summary
    }

    /// Returns once [`VectorBuilder::vector`] has been asked about a text with a code point
    /// beyond the coverage this builder was read with (it returned `None` for it): the
    /// moment to read wider rules, if the caller started narrow.
    pub async fn beyond_coverage(&self) {
        // Created before the check, so a note in between is not missed.
        let notified = self.beyond.notify.notified();
        if self.beyond.seen.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// The server's `civicload_page_vector(text)` for `text`, or `None` when civicload
    /// cannot guarantee the identical result (see the module docs); pass `""` for NULL.
    pub fn vector(&self, text: &str) -> Option<Tsv> {
        let rules = &self.rules;
        if text.as_bytes().contains(&0) {
            return None;
        }
        let text = rules.unaccent(text);
        let bytes = text.as_bytes();

        let mut chars: Vec<Ch> = Vec::with_capacity(bytes.len() + 1);
        let mut i = 0;
        while i < bytes.len() {
            // A run of ASCII in one extend; then one non-ASCII character.
            let run = bytes[i..]
                .iter()
                .position(|&b| b >= 0x80)
                .unwrap_or(bytes.len() - i);
            chars.extend(bytes[i..i + run].iter().enumerate().map(|(k, &b)| Ch {
                off: (i + k) as u32,
                len: 1,
                byte: b,
                class: rules.ascii_class[b as usize],
            }));
            i += run;
            if i == bytes.len() {
                break;
            }
            let c = text[i..].chars().next().expect("a char starts here");
            let class = rules.class(c);
            if class & class::UNVERIFIED != 0 {
                if !rules.probed(c) {
                    self.beyond.note();
                }
                return None;
            }
            let len = c.len_utf8();
            chars.push(Ch {
                off: i as u32,
                len: len as u8,
                byte: 0,
                class,
            });
            i += len;
        }
        chars.push(Ch {
            off: bytes.len() as u32,
            len: 0,
            byte: 0,
            class: 0,
        });

        // parsetext: each indexed token takes the next position.
        let mut lexemes = Lexemes::with_capacity(bytes.len());
        let mut position: u32 = 0;
        let mut parser = Parser::new(bytes, &chars, Some(&rules.dispatch));
        while let Some(token) = parser.next_token() {
            if token.len >= MAXSTRLEN || !rules.indexed[token.ty as usize] {
                continue;
            }
            position += 1;
            let start = lexemes.buf.len();
            rules.push_lower(
                &text[token.start..token.start + token.len],
                &mut lexemes.buf,
            );
            if lexemes.buf.len() - start > MAXSTRLEN {
                // A lowercase longer than its token overflows tsvector's 11-bit length.
                return None;
            }
            lexemes.add(start, position.min(MAX_POSITION) as u16);
        }
        lexemes.finish()
    }
}

/// The distinct lexemes of one text as they are found (`uniqueWORD` done incrementally):
/// a hash table merges repeats as they come, and since tokens arrive in position order the
/// position rules apply on the fly. Only distinct lexemes get sorted at the end.
struct Lexemes {
    /// Distinct lexemes back to back, in order of first occurrence; a repeat's bytes are
    /// appended, recognised and cut off again.
    buf: Vec<u8>,
    distinct: Vec<Distinct>,
    /// Open addressing: 0 = empty, else an index into `distinct` plus one.
    slots: Vec<u32>,
    /// (distinct index, position) of every position kept, in text order.
    kept: Vec<(u32, u16)>,
}

/// One distinct lexeme. `hi`/`lo` hold its first 16 bytes big-endian, zero-padded: as
/// lexemes hold no NUL, comparing `(hi, lo)` compares the first 16 bytes in memcmp order,
/// and two lexemes of at most 16 bytes are equal iff their keys and lengths are.
#[derive(Clone, Copy)]
struct Distinct {
    hi: u64,
    lo: u64,
    start: u32,
    len: u16,
    npos: u16,
    last: u16,
}

/// Bytes held in a lexeme's sort key.
const KEY_BYTES: usize = 16;

impl Distinct {
    /// The bytes after the key.
    #[inline]
    fn rest<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        let s = self.start as usize;
        &buf[s + (self.len as usize).min(KEY_BYTES)..s + self.len as usize]
    }
}

impl Lexemes {
    fn with_capacity(text_bytes: usize) -> Self {
        let slots = (text_bytes / 4).max(64).next_power_of_two();
        Lexemes {
            buf: Vec::with_capacity(text_bytes + 16),
            distinct: Vec::with_capacity(slots / 2),
            slots: vec![0; slots],
            kept: Vec::with_capacity(text_bytes / 5 + 1),
        }
    }

    #[inline]
    fn slot_of(&self, hi: u64, lo: u64, len: usize) -> usize {
        let h = (hi ^ lo.rotate_left(29) ^ len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 32) as usize & (self.slots.len() - 1)
    }

    /// Takes the lexeme at `buf[start..]` with its (capped) position.
    #[inline]
    fn add(&mut self, start: usize, pos: u16) {
        let len = self.buf.len() - start;
        let mut key = [0u8; KEY_BYTES];
        let n = len.min(KEY_BYTES);
        for (k, &b) in key[..n].iter_mut().zip(&self.buf[start..start + n]) {
            *k = b;
        }
        let (h, l) = key.split_at(8);
        let hi = u64::from_be_bytes(h.try_into().expect("8 bytes"));
        let lo = u64::from_be_bytes(l.try_into().expect("8 bytes"));

        let mask = self.slots.len() - 1;
        let mut slot = self.slot_of(hi, lo, len);
        loop {
            let s = self.slots[slot];
            if s == 0 {
                break;
            }
            let d = self.distinct[s as usize - 1];
            if d.hi == hi
                && d.lo == lo
                && d.len as usize == len
                && (len <= KEY_BYTES || d.rest(&self.buf) == &self.buf[start + KEY_BYTES..])
            {
                // A repeat: keep the position as uniqueWORD would (at most 255, none
                // after 16383, no repeat of the previous one).
                self.buf.truncate(start);
                let d = &mut self.distinct[s as usize - 1];
                if (d.npos as usize) < MAX_POSITIONS_PER_LEXEME
                    && d.last != MAX_POSITION as u16
                    && d.last != pos
                {
                    d.npos += 1;
                    d.last = pos;
                    self.kept.push((s - 1, pos));
                }
                return;
            }
            slot = (slot + 1) & mask;
        }
        let id = self.distinct.len() as u32;
        self.distinct.push(Distinct {
            hi,
            lo,
            start: start as u32,
            len: len as u16,
            npos: 1,
            last: pos,
        });
        self.slots[slot] = id + 1;
        self.kept.push((id, pos));
        if self.distinct.len() * 2 > self.slots.len() {
            self.grow();
        }
    }

    fn grow(&mut self) {
        self.slots = vec![0; self.slots.len() * 2];
        let mask = self.slots.len() - 1;
        for (i, d) in self.distinct.iter().enumerate() {
            let mut slot = self.slot_of(d.hi, d.lo, d.len as usize);
            while self.slots[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            self.slots[slot] = i as u32 + 1;
        }
    }

    /// `make_tsvector`: distinct lexemes in tsCompareString order (memcmp, a prefix before
    /// the longer lexeme), each with its positions.
    fn finish(self) -> Option<Tsv> {
        let Lexemes {
            buf,
            distinct,
            kept,
            ..
        } = self;
        let mut order: Vec<(u64, u64, u32)> = distinct
            .iter()
            .enumerate()
            .map(|(i, d)| (d.hi, d.lo, i as u32))
            .collect();
        order.sort_unstable_by_key(|&(hi, lo, _)| (hi, lo));
        // Distinct lexemes share a key only beyond 16 bytes: order those by the rest.
        let mut i = 0;
        while i < order.len() {
            let mut j = i + 1;
            while j < order.len() && (order[j].0, order[j].1) == (order[i].0, order[i].1) {
                j += 1;
            }
            if j - i > 1 {
                order[i..j].sort_by(|a, b| {
                    distinct[a.2 as usize]
                        .rest(&buf)
                        .cmp(distinct[b.2 as usize].rest(&buf))
                });
            }
            i = j;
        }

        // Lay positions out lexeme by lexeme in that order; fill them in text order, which
        // is ascending within each lexeme.
        let mut offset = vec![0u32; distinct.len()];
        let mut entries = Vec::with_capacity(distinct.len());
        let mut total = 0u32;
        for &(_, _, id) in &order {
            let d = distinct[id as usize];
            offset[id as usize] = total;
            entries.push(Entry {
                start: d.start,
                len: d.len,
                pos_start: total,
                npos: d.npos,
            });
            total += d.npos as u32;
        }
        let mut positions = vec![0u16; total as usize];
        for (id, pos) in kept {
            let o = &mut offset[id as usize];
            positions[*o as usize] = pos;
            *o += 1;
        }

        // make_tsvector's size check: lexemes, each followed (2-byte aligned) by a count
        // and its positions. Over the limit PostgreSQL raises an error: leave that to it.
        let mut size = 0usize;
        for e in &entries {
            size += e.len as usize;
            size = (size + 1) & !1;
            size += 2 + 2 * e.npos as usize;
        }
        if size > MAXSTRPOS {
            return None;
        }
        let lexeme_bytes = buf.len();
        Some(Tsv {
            lexemes: buf,
            lexeme_bytes,
            entries,
            positions,
        })
    }
}

/// A search vector: sorted, distinct lexemes with their positions (weight D).
#[derive(Clone, Debug, Default)]
pub struct Tsv {
    /// The distinct lexemes back to back, in order of first occurrence; entries point
    /// into it. Always UTF-8: lowercased pieces of a `&str`.
    lexemes: Vec<u8>,
    /// Total bytes of the distinct lexemes.
    lexeme_bytes: usize,
    entries: Vec<Entry>,
    positions: Vec<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    start: u32,
    len: u16,
    pos_start: u32,
    npos: u16,
}

/// Equal when the lexemes and positions are (not the buffers they were cut from).
impl PartialEq for Tsv {
    fn eq(&self, other: &Tsv) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Tsv {}

impl Tsv {
    /// Number of distinct lexemes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the vector has no lexeme (an empty or all-punctuation text).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The lexemes in order, each with its positions.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u16])> + '_ {
        self.entries.iter().map(move |e| {
            let s = e.start as usize;
            let p = e.pos_start as usize;
            (
                std::str::from_utf8(&self.lexemes[s..s + e.len as usize])
                    .expect("lexemes are lowercased UTF-8 text"),
                &self.positions[p..p + e.npos as usize],
            )
        })
    }

    /// The external text form, exactly as `tsvector::text` prints it (`tsvectorout`).
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.lexeme_bytes + 8 * self.entries.len());
        for (i, (lexeme, positions)) in self.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push('\'');
            for c in lexeme.chars() {
                if c == '\'' || c == '\\' {
                    out.push(c);
                }
                out.push(c);
            }
            out.push('\'');
            for (k, p) in positions.iter().enumerate() {
                out.push(if k == 0 { ':' } else { ',' });
                // Weight D (0) prints no letter; these vectors carry no other weight.
                out.push_str(&p.to_string());
            }
        }
        out
    }

    /// Size in bytes of [`Tsv::encode_binary`]'s output.
    pub fn binary_len(&self) -> usize {
        4 + self.lexeme_bytes + 3 * self.entries.len() + 2 * self.positions.len()
    }

    /// The binary send format (`tsvectorsend`), as one binary COPY field value without its
    /// length prefix: int32 lexeme count, then per lexeme its bytes, a NUL, a uint16
    /// position count and uint16 positions (weight bits zero). The lexemes are sent as they
    /// are: the client encoding must be UTF8, as it is for sqlx.
    pub fn encode_binary(&self, out: &mut BytesMut) {
        out.reserve(self.binary_len());
        out.put_i32(self.entries.len() as i32);
        for e in &self.entries {
            let s = e.start as usize;
            out.put_slice(&self.lexemes[s..s + e.len as usize]);
            out.put_u8(0);
            out.put_u16(e.npos);
            let p = e.pos_start as usize;
            for &pos in &self.positions[p..p + e.npos as usize] {
                out.put_u16(pos);
            }
        }
    }

    /// Reads the binary send format (`tsvectorsend(v)`, [`Tsv::encode_binary`]'s layout),
    /// positions without their weight bits; None if the bytes are not one.
    pub fn decode_binary(bytes: &[u8]) -> Option<Tsv> {
        fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
            let s = bytes.get(*at..at.checked_add(n)?)?;
            *at += n;
            Some(s)
        }
        let at = &mut 0;
        let count = i32::from_be_bytes(take(bytes, at, 4)?.try_into().ok()?);
        let mut v = Tsv::default();
        for _ in 0..usize::try_from(count).ok()? {
            let len = bytes.get(*at..)?.iter().position(|&b| b == 0)?;
            let lexeme = take(bytes, at, len + 1)?;
            let npos = u16::from_be_bytes(take(bytes, at, 2)?.try_into().ok()?);
            v.entries.push(Entry {
                start: v.lexemes.len() as u32,
                len: u16::try_from(len).ok()?,
                pos_start: v.positions.len() as u32,
                npos,
            });
            v.lexemes.extend_from_slice(&lexeme[..len]);
            for p in take(bytes, at, 2 * npos as usize)?.chunks_exact(2) {
                v.positions.push(u16::from_be_bytes([p[0], p[1]]) & 0x3FFF);
            }
        }
        v.lexeme_bytes = v.lexemes.len();
        (*at == bytes.len() && std::str::from_utf8(&v.lexemes).is_ok()).then_some(v)
    }

    /// One binary COPY field: the int32 length, then [`Tsv::encode_binary`].
    pub fn encode_copy_field(&self, out: &mut BytesMut) {
        out.reserve(4 + self.binary_len());
        out.put_i32(self.binary_len() as i32);
        self.encode_binary(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tsv(words: &[(&str, u16)]) -> Tsv {
        let mut lexemes = Lexemes::with_capacity(16);
        for (w, p) in words {
            let start = lexemes.buf.len();
            lexemes.buf.extend_from_slice(w.as_bytes());
            lexemes.add(start, *p);
        }
        lexemes.finish().unwrap()
    }

    #[test]
    fn binary_form_reads_back_and_malformed_bytes_do_not() {
        let v = tsv(&[("fiscal", 1), ("year", 2), ("fiscal", 7), ("zürich", 3)]);
        let mut out = BytesMut::new();
        v.encode_binary(&mut out);
        assert_eq!(Tsv::decode_binary(&out), Some(v.clone()));
        assert_eq!(
            Tsv::decode_binary(&out).unwrap().phrase_keys(),
            v.phrase_keys()
        );
        // Weight bits (setweight) are not positions.
        let mut weighted = out.to_vec();
        let at = weighted.len() - 2;
        weighted[at] |= 0xC0;
        assert_eq!(Tsv::decode_binary(&weighted), Some(v));
        for bad in [&out[..out.len() - 1], &[0, 0, 0, 1, b'a'][..], &[0, 0][..]] {
            assert_eq!(Tsv::decode_binary(bad), None, "{bad:?}");
        }
        let mut trailing = out.to_vec();
        trailing.push(0);
        assert_eq!(Tsv::decode_binary(&trailing), None);
    }

    /// Rules with ASCII classes, every non-ASCII letter of Rust's Unicode tables a letter,
    /// no unaccent rules, and the given lowercase mappings.
    fn rules(lower: &[(char, char)]) -> VectorBuilder {
        let mut ascii_class = [0u8; 128];
        let mut ascii_lower = [0u8; 128];
        for b in 0..128u8 {
            ascii_lower[b as usize] = b.to_ascii_lowercase();
            let c = b as char;
            if c.is_ascii_alphabetic() {
                ascii_class[b as usize] |= class::ALPHA;
            }
            if c.is_ascii_digit() {
                ascii_class[b as usize] |= class::DIGIT;
            }
            if c.is_ascii_whitespace() {
                ascii_class[b as usize] |= class::SPACE;
            }
        }
        let mut bmp_class = vec![0u8; 0x10000].into_boxed_slice();
        for cp in 0x80..0x10000u32 {
            if char::from_u32(cp).is_some_and(char::is_alphabetic) {
                bmp_class[cp as usize] = class::ALPHA;
            }
        }
        let mut indexed = [false; parser::tok::LAST as usize + 1];
        for t in [
            parser::tok::ASCIIWORD,
            parser::tok::WORD,
            parser::tok::NUMWORD,
        ] {
            indexed[t as usize] = true;
        }
        VectorBuilder {
            rules: Rules {
                ascii_class,
                bmp_class,
                astral_class: vec![(0x10000, 0x1FFFF, 0)],
                ascii_lower,
                lower: lower.iter().map(|&(a, b)| (a as u32, b as u32)).collect(),
                unaccent: Vec::new(),
                unaccent_text: String::new(),
                unaccent_ascii: false,
                indexed,
                dispatch: Dispatch::new(&ascii_class),
            },
            summary: RulesSummary::default(),
            beyond: Beyond::default(),
        }
    }

    #[test]
    fn one_builder_serves_every_worker() {
        fn shared<T: Send + Sync>() {}
        shared::<VectorBuilder>();
        shared::<Tsv>();
    }

    #[tokio::test]
    async fn a_code_point_beyond_the_probes_asks_for_wider_rules() {
        use futures::FutureExt;
        // Probed: the BMP and U+10000..U+1FFFF (class 0 there: not a letter).
        let b = rules(&[]);
        assert!(b.vector("plain words").is_some());
        assert!(b.vector("a 🏛 b").is_some(), "U+1F3DB was probed");
        assert!(b.vector("a\0b").is_none());
        assert!(
            b.beyond_coverage().now_or_never().is_none(),
            "a probed code point, or a fallback for another reason, needs no wider rules"
        );
        // Waiting before the text comes by, and after: both return.
        let waiting = tokio::spawn({
            let b = std::sync::Arc::new(b);
            let w = b.clone();
            async move {
                let waiter = tokio::spawn(async move { w.beyond_coverage().await });
                tokio::task::yield_now().await;
                assert!(
                    b.vector("a \u{20000} b").is_none(),
                    "U+20000 was not probed"
                );
                waiter.await.unwrap();
                b
            }
        });
        let b = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("the waiter is woken")
            .unwrap();
        assert!(b.beyond_coverage().now_or_never().is_some());
    }

    #[test]
    fn fallbacks_where_postgresql_would_differ_or_fail() {
        let b = rules(&[('\u{23a}', '\u{2c65}')]);
        assert_eq!(b.vector("Hello hello").unwrap().to_text(), "'hello':1,2");
        // 1023 two-byte letters fit a token (2046 < 2047 bytes); their three-byte
        // lowercase does not fit tsvector's 11-bit length.
        assert!(b.vector(&"\u{23a}".repeat(1023)).is_none());
        assert!(b.vector(&"\u{23a}".repeat(600)).is_some());
        // A 2047-byte token is skipped, as parsetext does: no lexeme, no position.
        let t = b.vector(&format!("a {} b", "x".repeat(2047))).unwrap();
        assert_eq!(t.to_text(), "'a':1 'b':2");
        // NUL cannot be in a PostgreSQL text; a code point the probes did not verify.
        assert!(b.vector("a\0b").is_none());
        assert!(b.vector("a \u{20000} b").is_none());
    }

    #[test]
    fn lexemes_sort_by_bytes_and_merge_positions() {
        // PostgreSQL: to_tsvector('simple', 'bb a ab b a') = 'a':2,5 'ab':3 'b':4 'bb':1
        let t = tsv(&[("bb", 1), ("a", 2), ("ab", 3), ("b", 4), ("a", 5)]);
        assert_eq!(t.to_text(), "'a':2,5 'ab':3 'b':4 'bb':1");
        // Around and beyond the 16-byte sort key.
        let t = tsv(&[
            ("abcdefghijklmnopqr", 1),
            ("abcdefghijklmnop", 2),
            ("abcdefghijklmnopq", 3),
            ("abcdefghijklmnopa", 4),
            ("abcdefghijklmnopq", 5),
            ("abcdefghi", 6),
            ("abcdefghijklmnopq", 7),
        ]);
        assert_eq!(
            t.to_text(),
            "'abcdefghi':6 'abcdefghijklmnop':2 'abcdefghijklmnopa':4 'abcdefghijklmnopq':3,5,7 'abcdefghijklmnopqr':1"
        );
    }

    #[test]
    fn merging_as_found_equals_sorting_all_occurrences() {
        // uniqueWORD literally: sort every (lexeme, position), then merge.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut words: Vec<(String, u16)> = Vec::new();
        for pos in 1..=20_000u32 {
            let stem =
                ["a", "abcdefghijklmnop", "abcdefghijklmnopq", "z", "é", "mm"][next(6) as usize];
            let w = format!("{stem}{}", next(3000));
            words.push((w, pos.min(16_383) as u16));
        }
        let mut sorted = words.clone();
        sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(&b.1)));
        let mut expected = String::new();
        let mut i = 0;
        while i < sorted.len() {
            let mut positions = vec![sorted[i].1];
            let mut j = i + 1;
            while j < sorted.len() && sorted[j].0 == sorted[i].0 {
                let last = *positions.last().unwrap();
                if positions.len() < 255 && last != 16_383 && last != sorted[j].1 {
                    positions.push(sorted[j].1);
                }
                j += 1;
            }
            if !expected.is_empty() {
                expected.push(' ');
            }
            expected.push_str(&format!("'{}':", sorted[i].0));
            expected.push_str(
                &positions
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
            i = j;
        }
        let refs: Vec<(&str, u16)> = words.iter().map(|(w, p)| (w.as_str(), *p)).collect();
        assert_eq!(tsv(&refs).to_text(), expected);
    }

    #[test]
    fn quotes_and_backslashes_are_doubled() {
        let t = tsv(&[("it's", 1), ("a\\b", 2)]);
        assert_eq!(t.to_text(), "'a\\\\b':2 'it''s':1");
    }

    #[test]
    fn positions_cap_at_16383_and_255_per_lexeme() {
        let words: Vec<(&str, u16)> = (1..=300u16).map(|p| ("x", p)).collect();
        let t = tsv(&words);
        assert_eq!(t.iter().next().unwrap().1.len(), 255);

        let t = tsv(&[("y", 16382), ("y", 16383), ("y", 16383)]);
        assert_eq!(t.to_text(), "'y':16382,16383");
    }

    #[test]
    fn binary_form_matches_tsvectorsend() {
        let t = tsv(&[("ab", 1), ("c", 2), ("ab", 3)]);
        let mut out = BytesMut::new();
        t.encode_binary(&mut out);
        assert_eq!(
            &out[..],
            &[0, 0, 0, 2, b'a', b'b', 0, 0, 2, 0, 1, 0, 3, b'c', 0, 0, 1, 0, 2]
        );
        assert_eq!(out.len(), t.binary_len());
        let empty = Lexemes::with_capacity(0).finish().unwrap();
        assert_eq!(empty.to_text(), "");
        assert_eq!(empty.binary_len(), 4);
    }
}
