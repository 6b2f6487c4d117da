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
//! Each probe is one statement (in `store::text_search`, with the catalog reads); the
//! parser probes run one after the other (each string is ~9 MB for every code point, and
//! the complete probe runs beside a load).

use std::collections::{BTreeSet, HashMap};

use sqlx::PgPool;

use super::parser::{class, tok};
use super::{Rules, RulesSummary, VectorBuilder, VectorError};
use crate::store::text_search::{self, MappingRow, TextSearchError};

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

impl From<TextSearchError> for VectorError {
    fn from(e: TextSearchError) -> Self {
        VectorError::Sql {
            step: e.step,
            source: e.source,
        }
    }
}

/// The search configuration as the catalog describes it, once checked to be what the
/// builder reproduces.
struct Configuration {
    /// The default parser's oid.
    parser: i64,
    /// The plain `simple` dictionary every indexed token type goes to.
    dict: i64,
    /// Which token types the configuration indexes, by token type.
    indexed: [bool; tok::LAST as usize + 1],
}

/// What the server answered to the per-character probes (see the module docs).
struct Answers {
    /// `ts_lexize` of the `simple` dictionary over every probed code point from U+0001.
    lowered: Option<String>,
    /// `unaccent` over every probed code point from U+0002, separated by U+0001.
    unaccented: String,
    /// `unaccent` of U+0001 alone.
    sep_alone: String,
    /// The tokens of the four parser probes, in the order of [`PARSER_PROBES`].
    tokens: [Vec<(i32, String)>; 4],
}

/// Reads every rule the search vector depends on from the server (see the module docs):
/// checks that the server and `civicload_page_vector` are what the builder reproduces,
/// probes every code point `coverage` names, and turns the answers into [`Rules`].
pub(crate) async fn read_rules(
    pool: &PgPool,
    coverage: Coverage,
) -> Result<(Rules, RulesSummary), VectorError> {
    let mut summary = RulesSummary::default();
    check_server(pool, &mut summary).await?;
    check_page_vector(pool).await?;
    let config = read_configuration(pool, &mut summary).await?;
    summary.rules_file_checked = check_unaccent_dictionary(pool).await?;

    let lower_input: String = probed(coverage, 1).collect();
    let answers = run_probes(pool, coverage, &config, &lower_input).await?;

    let (ascii_lower, lower) = lowercase_rules(&lower_input, answers.lowered)?;
    summary.lowercase_mappings =
        lower.len() + (0..128u8).filter(|&b| ascii_lower[b as usize] != b).count();
    let (unaccent, unaccent_text) =
        unaccent_rules(coverage, &answers.unaccented, &answers.sep_alone)?;
    let unaccent_ascii = unaccent.iter().any(|&(cp, _, _)| cp < 0x80);
    summary.unaccent_rules = unaccent.len();

    let ascii_class = ascii_classes();
    let (found, unverified) = note_tokens(&answers.tokens);
    let (bmp_class, astral) = non_ascii_classes(coverage, &found, &unverified, &mut summary);

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
            indexed: config.indexed,
            dispatch: super::parser::Dispatch::new(&ascii_class),
        },
        summary,
    ))
}

/// The server: a verified major version, UTF8. Records its version and locale.
async fn check_server(pool: &PgPool, summary: &mut RulesSummary) -> Result<(), VectorError> {
    let settings = text_search::server_settings(pool).await?;
    summary.server_version = settings.version;
    summary.lc_ctype = settings.lc_ctype;
    let major = (settings.version_num / 10_000) as u32;
    if !VERIFIED_MAJOR_VERSIONS.contains(&major) {
        return Err(VectorError::Unsupported(format!(
            "PostgreSQL {} is not among the verified major versions {:?}",
            summary.server_version, VERIFIED_MAJOR_VERSIONS
        )));
    }
    if settings.encoding != "UTF8" {
        return Err(VectorError::Unsupported(format!(
            "the server encoding is {}, not UTF8",
            settings.encoding
        )));
    }
    Ok(())
}

/// The expression being reproduced: `civicload_page_vector` must be [`EXPECTED_BODY`].
async fn check_page_vector(pool: &PgPool) -> Result<(), VectorError> {
    let Some(body) = text_search::page_vector_definition(pool).await? else {
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
    Ok(())
}

/// The configuration: the default parser, and which token types go to which dictionary.
/// Records the indexed token types.
async fn read_configuration(
    pool: &PgPool,
    summary: &mut RulesSummary,
) -> Result<Configuration, VectorError> {
    let simple = text_search::simple_configuration(pool).await?;
    if simple.functions
        != (
            "prsd_start".into(),
            "prsd_nexttoken".into(),
            "prsd_end".into(),
        )
    {
        return Err(VectorError::Unsupported(format!(
            "the simple configuration uses parser functions {:?}, not the default parser",
            simple.functions
        )));
    }
    let types = text_search::token_types(pool, simple.parser).await?;
    let expected: Vec<(i32, String)> = (1..=tok::LAST)
        .map(|t| (t as i32, tok::ALIASES[t as usize].to_string()))
        .collect();
    if types != expected {
        return Err(VectorError::Unsupported(
            "the parser's token types are not the default parser's".into(),
        ));
    }
    let map = text_search::configuration_mapping(pool, simple.config).await?;
    let (dict, indexed) = check_mapping(&map)?;
    summary.indexed_token_types = (1..=tok::LAST as usize)
        .filter(|&t| indexed[t])
        .map(|t| tok::ALIASES[t])
        .collect();
    Ok(Configuration {
        parser: simple.parser,
        dict,
        indexed,
    })
}

/// Every mapped token type goes to one and the same plain `simple` dictionary, once.
/// Returns that dictionary and the indexed token types.
fn check_mapping(map: &[MappingRow]) -> Result<(i64, [bool; tok::LAST as usize + 1]), VectorError> {
    let mut indexed = [false; tok::LAST as usize + 1];
    let mut dict: Option<i64> = None;
    for row in map {
        let ty = usize::try_from(row.token_type)
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
        let (lexize, options) = (&row.lexize, &row.options);
        if lexize != "dsimple_lexize" || options.as_deref().is_some_and(|o| !o.trim().is_empty()) {
            return Err(VectorError::Unsupported(format!(
                "token type {} goes to a dictionary other than a plain simple one ({lexize}, options {options:?})",
                tok::ALIASES[ty]
            )));
        }
        if dict.is_some_and(|d| d != row.dict) {
            return Err(VectorError::Unsupported(
                "the configuration uses more than one simple dictionary".into(),
            ));
        }
        dict = Some(row.dict);
        indexed[ty] = true;
    }
    let Some(dict) = dict else {
        return Err(VectorError::Unsupported(
            "the simple configuration indexes nothing".into(),
        ));
    };
    Ok((dict, indexed))
}

/// The unaccent dictionary: its template, and (if the server lets us read it) its file.
/// Returns whether the file was checked.
async fn check_unaccent_dictionary(pool: &PgPool) -> Result<bool, VectorError> {
    let (lexize, options) = text_search::unaccent_dictionary(pool).await?;
    if lexize != "unaccent_lexize" {
        return Err(VectorError::Unsupported(format!(
            "the unaccent dictionary uses {lexize}, not unaccent_lexize"
        )));
    }
    check_rules_file(pool, options.as_deref()).await
}

/// " X".
fn word_segment(c: char, s: &mut String) {
    s.push(' ');
    s.push(c);
}

/// " aX".
fn join_segment(c: char, s: &mut String) {
    s.push_str(" a");
    s.push(c);
}

/// " <a X>".
fn space_segment(c: char, s: &mut String) {
    s.push_str(" <a ");
    s.push(c);
    s.push('>');
}

/// " &#xX;".
fn xdigit_segment(c: char, s: &mut String) {
    s.push_str(" &#x");
    s.push(c);
    s.push(';');
}

/// The parser probes: how each writes its segment, and what it expects back.
const PARSER_PROBES: [(Segment, Expect); 4] = [
    (word_segment, WORD_PROBE),
    (join_segment, JOIN_PROBE),
    (space_segment, SPACE_PROBE),
    (xdigit_segment, XDIGIT_PROBE),
];

/// Sends the per-character probes: lowercasing and unaccent together, then the parser
/// probes one after the other (each probe string, and its answer, is ~9 MB for every code
/// point, and the complete probe runs beside a load). The server leaves out the token
/// types a probe ignores (`ignored`).
async fn run_probes(
    pool: &PgPool,
    coverage: Coverage,
    config: &Configuration,
    lower_input: &str,
) -> Result<Answers, VectorError> {
    let unaccent_input = unaccent_input(coverage);
    let (lowered, (unaccented, sep_alone)) = tokio::try_join!(
        text_search::lexize_first(pool, config.dict, lower_input),
        text_search::unaccent_with_separator(pool, &unaccent_input),
    )?;
    drop(unaccent_input);
    let mut answers = Vec::with_capacity(PARSER_PROBES.len());
    for (segment, expect) in PARSER_PROBES {
        let text = probe_text(coverage, segment);
        answers
            .push(text_search::parse_tokens(pool, config.parser, &text, &ignored(expect)).await?);
    }
    Ok(Answers {
        lowered,
        unaccented,
        sep_alone,
        tokens: answers.try_into().expect("four probes"),
    })
}

/// Every probed code point from U+0002, separated by U+0001.
fn unaccent_input(coverage: Coverage) -> String {
    let mut s = String::with_capacity(5_000_000);
    for c in probed(coverage, 2) {
        if !s.is_empty() {
            s.push(SEP);
        }
        s.push(c);
    }
    s
}

/// One parser probe's string: `segment` for every non-ASCII code point.
fn probe_text(coverage: Coverage, segment: Segment) -> String {
    let mut s = String::with_capacity(9_000_000);
    for c in non_ascii(coverage) {
        segment(c, &mut s);
    }
    s
}

/// The lowercase of each ASCII byte, and the non-ASCII (code point, lowercase) pairs that
/// change the character.
type Lowercase = ([u8; 128], Vec<(u32, u32)>);

/// Lowercasing: the ASCII table, and the non-ASCII code points that lowercase to another.
fn lowercase_rules(lower_input: &str, lowered: Option<String>) -> Result<Lowercase, VectorError> {
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
    Ok((ascii_lower, lower))
}

/// Unaccent's replacements (code point, start, end) and the text they are ranges of.
type Unaccent = (Vec<(u32, u32, u32)>, String);

/// Unaccent: (code point, start, end) of each replacement in the returned text, for the
/// code points unaccent changes.
fn unaccent_rules(
    coverage: Coverage,
    unaccented: &str,
    sep_alone: &str,
) -> Result<Unaccent, VectorError> {
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
    Ok((unaccent, unaccent_text))
}

/// The character classes of ASCII, the same in every locale.
fn ascii_classes() -> [u8; 128] {
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
    ascii_class
}

/// Each token of the parser probes against its probe's expectations (`Expect`): what each
/// probe found, per code point, and the code points in tokens no probe expects.
fn note_tokens(tokens: &[Vec<(i32, String)>; 4]) -> (HashMap<u32, u8>, BTreeSet<u32>) {
    let mut found = HashMap::<u32, u8>::new();
    let mut unverified = BTreeSet::<u32>::new();
    for (tokens, (_, expect)) in tokens.iter().zip(PARSER_PROBES) {
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
    }
    (found, unverified)
}

/// Class bits of U+0080..U+FFFF, and of the code points above as runs (first, last, class).
type Classes = (Box<[u8]>, Vec<(u32, u32, u8)>);

/// The character classes of the non-ASCII code points from what the probes found: the
/// Basic Multilingual Plane as a table, the others as runs (first, last, class). Counts
/// them in `summary`.
fn non_ascii_classes(
    coverage: Coverage,
    found: &HashMap<u32, u8>,
    unverified: &BTreeSet<u32>,
    summary: &mut RulesSummary,
) -> Classes {
    let mut bmp_class = vec![0u8; 0x10000].into_boxed_slice();
    let mut astral: Vec<(u32, u32, u8)> = Vec::new();
    for c in non_ascii(coverage) {
        let cp = c as u32;
        let k = non_ascii_class(
            found.get(&cp).copied().unwrap_or(0),
            unverified.contains(&cp),
        );
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
    (bmp_class, astral)
}

/// The class of one non-ASCII code point from what the probes found (`f`), or
/// `UNVERIFIED` when the probes disagree or a token held it unexpectedly.
fn non_ascii_class(f: u8, unexpected: bool) -> u8 {
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
    if !consistent || unexpected {
        k = class::UNVERIFIED;
    }
    k
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
    let content = match text_search::read_rules_file(pool, name).await {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(false),
        Err(TextSearchError {
            source: sqlx::Error::Database(e),
            ..
        }) if e.code().as_deref() == Some("42501") => return Ok(false),
        Err(e) => {
            tracing::debug!(error = %e.source, "Could not read the unaccent rules file; relying on the probe.");
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
    let server = text_search::page_vectors(pool, &texts).await?;
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
