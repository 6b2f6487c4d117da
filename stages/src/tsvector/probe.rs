//! Reads, from the target server, every per-character rule the search vector depends on,
//! by asking the server's own functions about every code point: nothing here is a copy of
//! a table that could drift from the server (locale, Unicode version, unaccent file).
//!
//! - unaccent: `unaccent()` over all code points, one string, separated by U+0001;
//! - lowercasing: `ts_lexize` of the configuration's `simple` dictionary over all code
//!   points in one string (`towlower` maps one character to one character);
//! - character classes of the parser, by `ts_parse` of four probe strings, one segment per
//!   code point X (non-ASCII; ASCII classes are the same in every locale):
//!   `" X"` (a one-character `word` token: letter; `uint`: digit),
//!   `" aX"` (`word` "aX": letter or word joiner, i.e. `p_isspecial`),
//!   `" <a X>"` (a `tag`: space or digit, the only classes a tag accepts there),
//!   `" &#xX;"` (an `entity`: hex digit).
//!
//! Each probe is one statement; the parser probes run one after the other (each string is
//! ~9 MB for every code point, and the complete probe runs beside a load).

use sqlx::{PgPool, Row};

use super::parser::{class, tok};
use super::{Rules, RulesSummary, VectorBuilder, VectorError};
use crate::store::sql::{self, autocommit};

/// Server major versions whose parser the differential test (tests/tsvector_diff.rs) has
/// proven identical to `parser.rs`. Another version makes the builder refuse: run that
/// test against it and add it here.
pub const VERIFIED_MAJOR_VERSIONS: &[u32] = &[15];

/// The expression civicload_page_vector must have (as `pg_get_functiondef` prints it,
/// schema qualifications removed); anything else is not what this module reproduces.
const EXPECTED_BODY: &str =
    "to_tsvector('simple'::regconfig, unaccent('unaccent'::regdictionary, COALESCE(t, ''::text)))";

const SEP: char = '\u{1}';

// What each probe found, per code point.
const WORD: u8 = 1; // " X" is a word
const UINT: u8 = 2; // " X" is an unsigned integer
const JOINS: u8 = 4; // "aX" is a word
const NUMWORD: u8 = 8; // "aX" is a numword
const TAG: u8 = 16; // "<a X>" is a tag
const ENTITY: u8 = 32; // "&#xX;" is an entity

/// A probe's expected token types: (type, bit, prefix, suffix) where the token is
/// prefix + X + suffix; bit 0 marks tokens a probe leaves behind when X is not of the
/// class it looks for (ignored). Any other token means the probe is not understood: the
/// non-ASCII characters in it are left to the server.
type Expect = &'static [(u8, u8, &'static str, &'static str)];

/// " X": a letter is a word, a digit an unsigned integer, anything else blank.
const WORD_PROBE: Expect = &[(tok::WORD, WORD, "", ""), (tok::UNSIGNEDINT, UINT, "", "")];
/// " aX": a letter or word joiner makes the word "aX", a digit the numword "aX"; otherwise
/// "a" stays alone.
const JOIN_PROBE: Expect = &[
    (tok::WORD, JOINS, "a", ""),
    (tok::NUMWORD, NUMWORD, "a", ""),
    (tok::ASCIIWORD, 0, "a", ""),
];
/// " <a X>": a space or digit keeps the tag; otherwise "a" and a letter X are words.
const SPACE_PROBE: Expect = &[
    (tok::TAG, TAG, "<a ", ">"),
    (tok::ASCIIWORD, 0, "a", ""),
    (tok::WORD, 0, "", ""),
];
/// " &#xX;": a hex digit makes an entity; otherwise "x" joins X as a word or numword.
const XDIGIT_PROBE: Expect = &[
    (tok::XMLENTITY, ENTITY, "&#x", ";"),
    (tok::ASCIIWORD, 0, "x", ""),
    (tok::WORD, 0, "x", ""),
    (tok::NUMWORD, 0, "x", ""),
];

/// Writes one probe segment for a code point.
type Segment = fn(char, &mut String);

/// The token types a probe ignores, which the server need not send.
fn ignored(expect: Expect) -> Vec<i32> {
    expect
        .iter()
        .filter(|e| e.1 == 0)
        .map(|e| e.0 as i32)
        .collect()
}

fn sql(step: &'static str) -> impl FnOnce(sqlx::Error) -> VectorError {
    move |source| VectorError::Sql { step, source }
}

/// Which code points the probes ask about. A text with a code point they did not ask
/// about is left to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Planes 0 and 1 (U+0000..U+1FFFF): the Basic Multilingual Plane and the
    /// Supplementary Multilingual Plane, which holds the emoji and symbols found in
    /// ordinary text. A sixth of the work of `Assigned`'s, quick enough to wait for before
    /// a load starts.
    Common,
    /// The planes Unicode assigns characters in: 0-3 and 14 (4-13 are unassigned, 15 and
    /// 16 private use), a quarter of all code points.
    Assigned,
}

/// The code points from `from` on that `coverage` asks about, without surrogates.
fn probed(coverage: Coverage, from: u32) -> impl Iterator<Item = char> {
    let (first, second) = match coverage {
        Coverage::Common => (from..=0x1FFFF, None),
        Coverage::Assigned => (from..=0x3FFFF, Some(0xE0000..=0xEFFFF)),
    };
    first
        .chain(second.into_iter().flatten())
        .filter_map(char::from_u32)
}

/// The non-ASCII code points of the probes.
fn non_ascii(coverage: Coverage) -> impl Iterator<Item = char> {
    probed(coverage, 0x80)
}

pub(crate) async fn read_rules(
    pool: &PgPool,
    coverage: Coverage,
) -> Result<(Rules, RulesSummary), VectorError> {
    let mut summary = RulesSummary::default();

    // The server, its encoding and locale.
    let row = sql::query(
        "SELECT current_setting('server_version_num')::int,
                current_setting('server_version'),
                current_setting('server_encoding'),
                current_setting('lc_ctype')",
    )
    .fetch_one(autocommit(pool))
    .await
    .map_err(sql("reading the server version"))?;
    let version_num: i32 = row.get(0);
    summary.server_version = row.get(1);
    let encoding: String = row.get(2);
    summary.lc_ctype = row.get(3);
    let major = (version_num / 10_000) as u32;
    if !VERIFIED_MAJOR_VERSIONS.contains(&major) {
        return Err(VectorError::Unsupported(format!(
            "PostgreSQL {} is not among the verified major versions {:?}",
            summary.server_version, VERIFIED_MAJOR_VERSIONS
        )));
    }
    if encoding != "UTF8" {
        return Err(VectorError::Unsupported(format!(
            "the server encoding is {encoding}, not UTF8"
        )));
    }

    // The expression being reproduced.
    let body: Option<String> = sql::query_scalar(
        "SELECT pg_get_functiondef(p.oid) FROM pg_proc p
         WHERE p.proname = 'civicload_page_vector' AND p.pronargs = 1
           AND p.proargtypes[0] = 'text'::regtype AND pg_function_is_visible(p.oid)",
    )
    .fetch_optional(autocommit(pool))
    .await
    .map_err(sql("reading civicload_page_vector"))?;
    let Some(body) = body else {
        return Err(VectorError::Unsupported(
            "the database has no civicload_page_vector(text): run civicload's migrations first"
                .into(),
        ));
    };
    let normalized = body.replace("public.", "").replace("pg_catalog.", "");
    if !normalized.contains(EXPECTED_BODY) {
        return Err(VectorError::Unsupported(format!(
            "civicload_page_vector is not {EXPECTED_BODY}"
        )));
    }

    // The configuration: the default parser, and which token types go to which dictionary.
    let row = sql::query(
        "SELECT c.oid::bigint, p.oid::bigint, p.prsstart::text, p.prstoken::text, p.prsend::text
         FROM pg_ts_config c JOIN pg_ts_parser p ON p.oid = c.cfgparser
         WHERE c.oid = 'simple'::regconfig",
    )
    .fetch_one(autocommit(pool))
    .await
    .map_err(sql("reading the simple configuration"))?;
    let config: i64 = row.get(0);
    let parser: i64 = row.get(1);
    let functions: (String, String, String) = (row.get(2), row.get(3), row.get(4));
    if functions
        != (
            "prsd_start".into(),
            "prsd_nexttoken".into(),
            "prsd_end".into(),
        )
    {
        return Err(VectorError::Unsupported(format!(
            "the simple configuration uses parser functions {functions:?}, not the default parser"
        )));
    }
    let types: Vec<(i32, String)> =
        sql::query_as("SELECT tokid, alias FROM ts_token_type($1::oid)")
            .bind(parser)
            .fetch_all(autocommit(pool))
            .await
            .map_err(sql("reading the parser's token types"))?;
    let expected: Vec<(i32, String)> = (1..=tok::LAST)
        .map(|t| (t as i32, tok::ALIASES[t as usize].to_string()))
        .collect();
    if types != expected {
        return Err(VectorError::Unsupported(
            "the parser's token types are not the default parser's".into(),
        ));
    }
    let map: Vec<(i32, i32, i64, String, Option<String>)> = sql::query_as(
        "SELECT m.maptokentype, m.mapseqno, d.oid::bigint, t.tmpllexize::text, d.dictinitoption
         FROM pg_ts_config_map m
         JOIN pg_ts_dict d ON d.oid = m.mapdict
         JOIN pg_ts_template t ON t.oid = d.dicttemplate
         WHERE m.mapcfg = $1::oid ORDER BY 1, 2",
    )
    .bind(config)
    .fetch_all(autocommit(pool))
    .await
    .map_err(sql("reading the simple configuration's mapping"))?;
    let mut indexed = [false; tok::LAST as usize + 1];
    let mut dict: Option<i64> = None;
    for (ty, _, oid, lexize, options) in &map {
        let ty = usize::try_from(*ty)
            .ok()
            .filter(|t| (1..=tok::LAST as usize).contains(t));
        let Some(ty) = ty else {
            return Err(VectorError::Unsupported(
                "a mapping for an unknown token type".into(),
            ));
        };
        if indexed[ty] {
            return Err(VectorError::Unsupported(format!(
                "token type {} goes through more than one dictionary",
                tok::ALIASES[ty]
            )));
        }
        if lexize != "dsimple_lexize" || options.as_deref().is_some_and(|o| !o.trim().is_empty()) {
            return Err(VectorError::Unsupported(format!(
                "token type {} goes to a dictionary other than a plain simple one ({lexize}, options {options:?})",
                tok::ALIASES[ty]
            )));
        }
        if dict.is_some_and(|d| d != *oid) {
            return Err(VectorError::Unsupported(
                "the configuration uses more than one simple dictionary".into(),
            ));
        }
        dict = Some(*oid);
        indexed[ty] = true;
    }
    let Some(dict) = dict else {
        return Err(VectorError::Unsupported(
            "the simple configuration indexes nothing".into(),
        ));
    };
    summary.indexed_token_types = (1..=tok::LAST as usize)
        .filter(|&t| indexed[t])
        .map(|t| tok::ALIASES[t])
        .collect();

    // The unaccent dictionary: its template, and (if the server lets us read it) its file.
    let row = sql::query(
        "SELECT t.tmpllexize::text, d.dictinitoption FROM pg_ts_dict d
         JOIN pg_ts_template t ON t.oid = d.dicttemplate
         WHERE d.oid = 'public.unaccent'::regdictionary",
    )
    .fetch_one(autocommit(pool))
    .await
    .map_err(sql("reading the unaccent dictionary"))?;
    let lexize: String = row.get(0);
    let options: Option<String> = row.get(1);
    if lexize != "unaccent_lexize" {
        return Err(VectorError::Unsupported(format!(
            "the unaccent dictionary uses {lexize}, not unaccent_lexize"
        )));
    }
    summary.rules_file_checked = check_rules_file(pool, options.as_deref()).await?;

    // The per-character probes.
    let lower_input: String = probed(coverage, 1).collect();
    let unaccent_input: String = {
        let mut s = String::with_capacity(5_000_000);
        for c in probed(coverage, 2) {
            if !s.is_empty() {
                s.push(SEP);
            }
            s.push(c);
        }
        s
    };
    let probe = |f: fn(char, &mut String)| {
        let mut s = String::with_capacity(9_000_000);
        for c in non_ascii(coverage) {
            f(c, &mut s);
        }
        s
    };

    let (lowered, (unaccented, sep_alone)) = tokio::try_join!(
        async {
            sql::query_scalar::<Option<String>>("SELECT (ts_lexize($1::oid::regdictionary, $2))[1]")
                .bind(dict)
                .bind(&lower_input)
                .fetch_one(autocommit(pool))
                .await
                .map_err(sql("lowercasing every code point with ts_lexize"))
        },
        async {
            sql::query_as::<(String, String)>(
                "SELECT public.unaccent('public.unaccent'::regdictionary, $1),
                        public.unaccent('public.unaccent'::regdictionary, chr(1))",
            )
            .bind(&unaccent_input)
            .fetch_one(autocommit(pool))
            .await
            .map_err(sql("running unaccent over every code point"))
        },
    )?;
    // The parser probes one after the other: each probe string (and its answer) is ~9 MB
    // for every code point, and the complete probe runs beside a load. The server leaves
    // out the token types the probe ignores (`ignored`).
    let segments: [(Segment, Expect); 4] = [
        (
            |c, s| {
                s.push(' ');
                s.push(c);
            },
            WORD_PROBE,
        ),
        (
            |c, s| {
                s.push_str(" a");
                s.push(c);
            },
            JOIN_PROBE,
        ),
        (
            |c, s| {
                s.push_str(" <a ");
                s.push(c);
                s.push('>');
            },
            SPACE_PROBE,
        ),
        (
            |c, s| {
                s.push_str(" &#x");
                s.push(c);
                s.push(';');
            },
            XDIGIT_PROBE,
        ),
    ];
    let mut answers = Vec::with_capacity(segments.len());
    for (segment, expect) in segments {
        answers.push(parse_tokens(pool, parser, &probe(segment), &ignored(expect)).await?);
    }
    let [t_word, t_join, t_space, t_xdigit]: [Vec<(i32, String)>; 4] =
        answers.try_into().expect("four probes");

    // Lowercasing.
    let Some(lowered) = lowered else {
        return Err(VectorError::Unsupported(
            "the simple dictionary rejects text".into(),
        ));
    };
    if lowered.chars().count() != lower_input.chars().count() {
        return Err(VectorError::Unsupported(
            "lowercasing changes the number of characters".into(),
        ));
    }
    let mut ascii_lower = [0u8; 128];
    let mut lower = Vec::new();
    for (c, l) in lower_input.chars().zip(lowered.chars()) {
        let cp = c as u32;
        if cp < 0x80 {
            if !l.is_ascii() {
                return Err(VectorError::Unsupported(format!(
                    "ASCII {c:?} lowercases to non-ASCII {l:?}"
                )));
            }
            ascii_lower[cp as usize] = l as u8;
        } else if c != l {
            lower.push((cp, l as u32));
        }
    }
    summary.lowercase_mappings =
        lower.len() + (0..128u8).filter(|&b| ascii_lower[b as usize] != b).count();

    // Unaccent.
    if sep_alone != SEP.to_string() {
        return Err(VectorError::Unsupported(
            "unaccent has a rule for U+0001".into(),
        ));
    }
    let mut unaccent = Vec::new();
    let mut unaccent_text = String::new();
    let mut parts = unaccented.split(SEP);
    for c in probed(coverage, 2) {
        let Some(part) = parts.next() else {
            return Err(VectorError::Unsupported(
                "unaccent's output does not line up with its input".into(),
            ));
        };
        let mut buf = [0u8; 4];
        if part != c.encode_utf8(&mut buf) {
            let start = unaccent_text.len() as u32;
            unaccent_text.push_str(part);
            unaccent.push((c as u32, start, unaccent_text.len() as u32));
        }
    }
    if parts.next().is_some() {
        return Err(VectorError::Unsupported(
            "unaccent's output does not line up with its input".into(),
        ));
    }
    let unaccent_ascii = unaccent.iter().any(|&(cp, _, _)| cp < 0x80);
    summary.unaccent_rules = unaccent.len();

    // Character classes.
    let mut ascii_class = [0u8; 128];
    for b in 0u8..128 {
        let c = b as char;
        let mut k = 0;
        if c.is_ascii_alphabetic() {
            k |= class::ALPHA;
        }
        if c.is_ascii_digit() {
            k |= class::DIGIT;
        }
        if c.is_ascii_hexdigit() {
            k |= class::XDIGIT;
        }
        if matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
            k |= class::SPACE;
        }
        ascii_class[b as usize] = k;
    }
    // Found by each probe, per code point.
    let mut found = std::collections::HashMap::<u32, u8>::new();
    let mut unverified = std::collections::BTreeSet::<u32>::new();
    // Each token against its probe's expectations (`Expect`).
    let mut note = |tokens: &[(i32, String)], expect: Expect| {
        for (ty, joined) in tokens {
            let rule = expect.iter().find(|(t, ..)| *t as i32 == *ty);
            for token in joined.split(SEP) {
                let inner = rule.and_then(|&(_, _, prefix, suffix)| {
                    token
                        .strip_prefix(prefix)
                        .and_then(|t| t.strip_suffix(suffix))
                        .filter(|t| t.chars().count() == 1)
                });
                match (rule, inner) {
                    (Some(&(_, 0, ..)), _) => {}
                    (Some(&(_, bit, ..)), Some(x)) => {
                        let cp = x.chars().next().expect("one char") as u32;
                        *found.entry(cp).or_default() |= bit;
                    }
                    _ => token.chars().filter(|c| !c.is_ascii()).for_each(|c| {
                        unverified.insert(c as u32);
                    }),
                }
            }
        }
    };
    note(&t_word, WORD_PROBE);
    note(&t_join, JOIN_PROBE);
    note(&t_space, SPACE_PROBE);
    note(&t_xdigit, XDIGIT_PROBE);

    let mut bmp_class = vec![0u8; 0x10000].into_boxed_slice();
    let mut astral: Vec<(u32, u32, u8)> = Vec::new();
    for c in non_ascii(coverage) {
        let cp = c as u32;
        let f = found.get(&cp).copied().unwrap_or(0);
        let mut k = 0u8;
        let alpha = f & WORD != 0;
        let digit = f & UINT != 0;
        if alpha {
            k |= class::ALPHA;
        }
        if digit {
            k |= class::DIGIT;
        }
        if f & JOINS != 0 && !alpha {
            k |= class::SPECIAL;
        }
        if f & TAG != 0 && !digit {
            k |= class::SPACE;
        }
        if f & ENTITY != 0 {
            k |= class::XDIGIT;
        }
        // Consistency between probes: a letter also joins "a", only a digit makes "aX" a
        // numword. And a non-ASCII digit (none in glibc) would hide its other classes
        // from the probes: leave it to the server.
        let consistent = (!alpha || f & JOINS != 0) && (f & NUMWORD == 0) && !digit;
        if !consistent || unverified.contains(&cp) {
            k = class::UNVERIFIED;
        }
        if k & class::ALPHA != 0 {
            summary.letters += 1;
        }
        if k & class::SPECIAL != 0 {
            summary.word_joiners += 1;
        }
        if k & class::SPACE != 0 {
            summary.spaces += 1;
        }
        if k & class::UNVERIFIED != 0 {
            summary.unverified += 1;
        }
        if cp <= 0xFFFF {
            bmp_class[cp as usize] = k;
        } else {
            match astral.last_mut() {
                Some(last) if last.1 + 1 == cp && last.2 == k => last.1 = cp,
                _ => astral.push((cp, cp, k)),
            }
        }
    }

    // The code points not asked about are left to the server.
    summary.unverified +=
        (0..=0x10FFFFu32).filter_map(char::from_u32).count() - probed(coverage, 0).count();
    Ok((
        Rules {
            ascii_class,
            bmp_class,
            astral_class: astral,
            ascii_lower,
            lower,
            unaccent,
            unaccent_text,
            unaccent_ascii,
            indexed,
            dispatch: super::parser::Dispatch::new(&ascii_class),
        },
        summary,
    ))
}

/// The non-blank tokens of `ts_parse(parser, text)` but those of the `ignored` types,
/// grouped by type, joined by U+0001 (a control character: it ends every token type, so it
/// never occurs inside one).
async fn parse_tokens(
    pool: &PgPool,
    parser: i64,
    text: &str,
    ignored: &[i32],
) -> Result<Vec<(i32, String)>, VectorError> {
    sql::query_as(
        "SELECT tokid, string_agg(token, chr(1)) FROM ts_parse($1::oid, $2)
         WHERE tokid <> 12 AND tokid <> ALL($3) GROUP BY tokid",
    )
    .bind(parser)
    .bind(text)
    .bind(ignored)
    .fetch_all(autocommit(pool))
    .await
    .map_err(sql("classifying every code point with ts_parse"))
}

/// Confirms, when the server lets us read files, that every unaccent rule replaces a
/// single code point: the probes see one code point at a time and would miss a rule for a
/// sequence. Returns whether the file was checked.
async fn check_rules_file(pool: &PgPool, options: Option<&str>) -> Result<bool, VectorError> {
    // dictinitoption looks like: rules = 'unaccent'
    let Some(name) = options
        .and_then(|o| o.split('\'').nth(1))
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    else {
        return Ok(false);
    };
    // Reading the file needs superuser or pg_read_server_files: without, the probe alone.
    let content: Result<Option<String>, sqlx::Error> = sql::query_scalar(
        "SELECT pg_read_file(setting || '/tsearch_data/' || $1 || '.rules')
         FROM pg_config WHERE name = 'SHAREDIR'",
    )
    .bind(name)
    .fetch_optional(autocommit(pool))
    .await;
    let content = match content {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(false),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => return Ok(false),
        Err(e) => {
            tracing::debug!(error = %e, "Could not read the unaccent rules file; relying on the probe.");
            return Ok(false);
        }
    };
    for line in content.lines() {
        let source: String = line.chars().take_while(|c| !c.is_whitespace()).collect();
        if source.chars().count() > 1 {
            return Err(VectorError::Unsupported(format!(
                "unaccent rule {source:?} replaces a sequence of characters"
            )));
        }
    }
    Ok(true)
}

/// Texts that exercise every construct of the parser and every fallback boundary. The
/// builder refuses to work if its vector for any of them differs from the server's.
pub(crate) const SAMPLE: &[&str] = &[
    "",
    "Hello, World! The CITY COUNCIL met on 2024-01-15.",
    "Café Núñez, Zürich; Ærøskøbing, İstanbul, ǅemal, ß, ẞ, ﬁnance",
    "foo-bar well-being re-OCR'd state-of-the-art x-1 1-x 2-3 a--b -x x- über-cool",
    "e-mail: clerk@city.gov, Jane.Doe+tag@sub.example.org, bad@, @bad, a@b",
    "http://www.example.com/path/to?x=1&y=2 https://civic.band/x.json ftp://h:8080/p www.example.com",
    "/usr/local/bin/x.txt ./rel/file ../up ~/home C:\\win\\path file.tar.gz",
    "1.2.3 1.2.3. v1.2 -1.5e10 +3 -7 3.14 .5 5. 1e5 1E-5 2,000 $1,234.56 10% 0x1F",
    "<b>bold</b> <a href=\"x\">link</a> <br/> <!-- comment --> <!DOCTYPE html> <?xml x?>",
    "<script>var hidden = 1;</script> shown <style>p {}</style> also",
    "&amp; &lt;tag&gt; &#169; &#x263A; &nbsp; & amp;",
    "CamelCase PlanningCommission snake_case __init__ a_b_c 3rd 21st 1st2nd",
    "Москва Αθήνα 北京市 서울 القاهرة ירושלים दिल्ली ไทย",
    "emoji 🎉 party 👍🏽 ok ✅ done ☃",
    "combining: cafe\u{301} n\u{303} e\u{308}\u{304}; zero\u{200b}width\u{200d}join",
    "nbsp\u{a0}word thin\u{2009}space ideo\u{3000}graphic line\u{2028}sep",
    "it's O'Brien's \"quoted\" back\\slash `tick`",
    "tab\tnew\nline\r\ncarriage\x0bvt\x0cff",
    "½ ¼ © ® ™ « » „ “ ” ‘ ’ — – … · •",
    "ǈ ǋ ǲ Ⅻ ⅻ Ⓐ ⓐ ﬀ ﬃ",
];

/// Compares the builder with the server on [`SAMPLE`].
pub(crate) async fn self_check(pool: &PgPool, builder: &VectorBuilder) -> Result<(), VectorError> {
    let texts: Vec<String> = SAMPLE.iter().map(|s| s.to_string()).collect();
    let server: Vec<String> = sql::query_scalar(
        "SELECT civicload_page_vector(t)::text FROM unnest($1::text[]) WITH ORDINALITY AS x(t, n) ORDER BY n",
    )
    .bind(&texts)
    .fetch_all(autocommit(pool))
    .await
    .map_err(sql("comparing vectors on the built-in sample"))?;
    for (text, server) in texts.iter().zip(server) {
        let Some(ours) = builder.vector(text) else {
            continue;
        };
        let ours = ours.to_text();
        if ours != server {
            return Err(VectorError::Mismatch {
                text: text.clone(),
                server,
                ours,
            });
        }
    }
    Ok(())
}
