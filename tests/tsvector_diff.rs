//! Differential test of civicload's Rust search vectors against PostgreSQL itself: for
//! every text where `VectorBuilder::vector` answers, the vector it encodes for binary COPY
//! must equal the server's `civicload_page_vector(text)` (compared as tsvector and as
//! `::text`), and so must its phrase keys (`civicload_phrase_keys`, migration 0014), over
//! a generated civic.band corpus, hand-written corner cases, random
//! compositions of tricky fragments and a sweep over the code points. The share of texts
//! it leaves to the server is reported (and bounded on the corpus).
//!
//! `cargo test --test tsvector_diff -- --nocapture` prints the numbers; the `#[ignore]`d
//! test runs a larger corpus and every code point.
// Tests talk to PostgreSQL directly with sqlx (clippy.toml steers the program to stages::store::sql).
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use sqlx::PgPool;
use stages::tsvector::{Tsv, VectorBuilder, VectorError};
use support::repo_root;

/// A fresh database (tests/support: dropped when the test ends, even on panic) with
/// civicload's schema, or empty, and a pool on it.
struct TestDb {
    pool: PgPool,
    _db: support::TestDb,
}

impl TestDb {
    async fn new(tag: &str, migrate: bool) -> TestDb {
        let db = support::TestDb::new(&format!("tsv_{tag}"));
        TestDb {
            pool: db.create(migrate).await,
            _db: db,
        }
    }
}

/// Page texts of a generated corpus (fixtures/generate.py, dumped by fixtures/dump.py),
/// generated once per parameter set and cached under the target dir.
fn corpus_texts(pages: u32, municipalities: u32, seed: u32) -> Vec<String> {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tsv-corpora");
    std::fs::create_dir_all(&base).unwrap();
    let dir = base.join(format!("p{pages}-m{municipalities}-s{seed}"));
    let dump = dir.join("pages.jsonl");
    if !dump.exists() {
        let tmp = base.join(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let out = Command::new("python3")
            .arg(repo_root().join("fixtures/generate.py"))
            .args(["--out", tmp.to_str().unwrap()])
            .args(["--pages", &pages.to_string()])
            .args(["--municipalities", &municipalities.to_string()])
            .args(["--seed", &seed.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "generate.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("python3")
            .arg(repo_root().join("fixtures/dump.py"))
            .arg(&tmp)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dump.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(tmp.join("pages.jsonl"), &out.stdout).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).unwrap();
    }
    read_texts(&dump)
}

fn read_texts(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap_or("").to_string()
        })
        .collect()
}

/// Hand-written corner cases of the parser, the dictionary and the tsvector limits.
fn adversarial() -> Vec<String> {
    let mut v: Vec<String> = [
        // Hyphens and numbers.
        "foo-bar",
        "foo-bar-baz",
        "foo--bar",
        "-foo",
        "foo-",
        "a-1",
        "1-a",
        "1-2",
        "a-1b",
        "1a-b2",
        "x-1-y",
        "über-café",
        "é-a",
        "a-é",
        "1-é",
        "a-\u{301}b",
        "-1",
        "+1",
        "-1.5",
        "+1.5e-3",
        "-1.5e10",
        "1e",
        "1e+",
        "1e+5",
        "1.e5",
        ".5",
        "5.",
        "1..2",
        "1.2.3",
        "1.2.3.",
        "1.2.3.4.5",
        "v1.2",
        "1.2a",
        "1.2.x",
        "-1.2.3",
        "0.0.0.0",
        "127.0.0.1",
        "192.168.1.1:8080",
        "3.14159",
        "2,000,000",
        "$1,234.56",
        "10%",
        "0x1F",
        "1_000",
        "1st",
        "2nd-3rd",
        "x2-y3",
        // E-mail addresses and hosts.
        "clerk@city.gov",
        "Jane.Doe@sub.example.org",
        "a_b@c-d.ef",
        "x@y",
        "@y.com",
        "x@.com",
        "x@y.c",
        "first.last+tag@example.co.uk",
        "a@b@c.com",
        "info@1.2.3.4",
        "a.b.c",
        "example.com",
        "www.example.com.",
        "sub_domain.example.com",
        "ex-ample.com",
        "example.com:80",
        "example.com:x",
        "a.b-",
        "a.1",
        "1.a",
        "a.b.1",
        // URLs and protocols.
        "http://example.com",
        "https://www.example.com/path/to/page.html?x=1&y=2#frag",
        "http://example.com:8080/",
        "ftp://files.example.org/pub/x.tar.gz",
        "mailto:x@y.com",
        "http://",
        "http:/x",
        "http://x",
        "http://example.com/a b",
        "http://example.com/\"q\"",
        "https://civic.band/alameda.ca/meetings/minutes.json?_size=1000&_sort=id",
        "www.example.com/path",
        "example.com/a/b/c",
        "http://ü.example.com/",
        "http://example.com/ü",
        // Files and paths.
        "/usr/local/bin",
        "/path/file.txt",
        "./rel",
        "../up/x",
        "~/home",
        "~user/x",
        "/",
        "//",
        "a/b",
        "1/2",
        "C:\\Windows\\x",
        "file.tar.gz",
        "x.txt.",
        ".hidden",
        "..",
        "...",
        "/.x",
        "/a.b/c.d",
        "/a-b/c_d",
        "a/b/c.",
        "/~x",
        "/x/",
        "../../a",
        // Tags, comments, entities, script and style.
        "<b>bold</b>",
        "<a href=\"x\">link</a>",
        "<a href='x'>y</a>",
        "<br/>",
        "<br />",
        "<p",
        "</p>",
        "<p>",
        "< p>",
        "<1>",
        "<_x>",
        "<:x>",
        "<a b=c d='e' f=\"g\\\"h\">",
        "<!-- c -->",
        "<!---->",
        "<!-- a -- b -->",
        "<!DOCTYPE html>",
        "<!doctype x>",
        "<?xml version=\"1\"?>",
        "<?xZ>",
        "<x",
        "<x y",
        "<x y=\"",
        "<script>hidden text</script>shown",
        "<SCRIPT>Hidden</SCRIPT>shown",
        "<style>p { x: y }</style>after",
        "<script>no end",
        "<script src=x>h</script >s",
        "</script>",
        "<scripts>not</scripts>",
        "<stylex>a</stylex>",
        "&amp;",
        "&lt;b&gt;",
        "&#169;",
        "&#x263A;",
        "&#X263a;",
        "&#xZZ;",
        "&#;",
        "&nbsp",
        "&a.b-c:d_e;",
        "& amp;",
        "&&",
        "&#12a;",
        "a&b",
        "<a>&amp;</a>",
        // Words, case, apostrophes, underscores.
        "CamelCase",
        "PlanningCommission",
        "snake_case",
        "__init__",
        "_x",
        "x_",
        "a_1",
        "1_a",
        "it's",
        "O'Brien",
        "rock'n'roll",
        "don't-stop",
        "\"quoted\"",
        "back\\slash",
        "`tick`",
        "MiXeD CaSe WoRdS",
        "ALLCAPS",
        "İstanbul",
        "ǅemal",
        "STRASSE Straße ẞ",
        "ﬁnance ﬀ",
        "Ⅻ ⅻ Ⓐ ⓐ",
        "Ⱥ",
        "ΣΊΣΥΦΟΣ",
        "ΌΣΟΣ",
        "Ǆ ǅ ǆ",
        "K Å Ω",
        // Scripts, emoji, combining and zero-width characters, spaces.
        "Москва Αθήνα 北京市 서울 القاهرة ירושלים दिल्ली ไทย ᏣᎳᎩ",
        "🎉",
        "a🎉b",
        "👍🏽",
        "1🎉2",
        "cafe\u{301}",
        "\u{301}abc",
        "a\u{301}-b",
        "n\u{303}1",
        "x\u{200b}y",
        "x\u{200d}y",
        "x\u{feff}y",
        "x\u{ad}y",
        "a\u{a0}b",
        "a\u{2009}b",
        "a\u{3000}b",
        "a\u{2028}b",
        "a\u{85}b",
        "x\u{1}y",
        "x\u{7f}y",
        "x\u{9f}y",
        "a\u{903}b",
        "ह\u{93f}न्दी",
        "தமிழ்",
        "٣٤٥",
        "a٣",
        "１２３",
        "ａｂｃ",
        "Ａ-Ｂ",
        "x\u{e0001}y",
        "\u{10ffff}",
        "\u{fffd}",
        "\u{e000}",
        // Unaccent corner cases.
        "½ ¼ ¾",
        "© ® ™",
        "« » „ “ ” ‘ ’",
        "— – … · •",
        "Æsop Œuvre ĳ",
        "ℌ ℍ ℃ ℉",
        "Đ đ Ħ ħ Ł ł",
        "ⅷ Ⅷ",
        "ﬆ",
        "ŉ",
        "a½b",
        "1½",
        "x©y",
        // Whitespace and punctuation only.
        "",
        " ",
        "\t\n\r",
        "...",
        "---",
        "+-+",
        "!!!",
        "@",
        "#",
        "~",
        "&",
        "<",
        ">",
        ";",
        "'",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    // Length limits: tokens of 2046, 2047 and 2048 bytes, in ASCII and with multibyte
    // characters straddling the limit; a lowercase longer than its token.
    for n in [2045usize, 2046, 2047, 2048, 2049] {
        v.push("a".repeat(n));
        v.push(format!("x {} y", "B".repeat(n)));
        v.push(format!("{}é", "a".repeat(n - 2)));
        v.push(format!("{}-z", "a".repeat(n)));
        v.push(format!("http://example.com/{}", "p".repeat(n)));
    }
    v.push("é".repeat(1023));
    v.push("É".repeat(1023));
    v.push("Ⱥ".repeat(600));
    // Positions: beyond 16383, and more than 255 repeats of one word.
    v.push((0..17_000).map(|i| format!("w{} ", i % 50)).collect());
    v.push("same ".repeat(400));
    v.push((0..20_000).map(|i| format!("u{i} ")).collect());
    v
}

/// A deterministic xorshift generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random compositions of fragments that steer the parser into every state.
fn fuzz(count: usize, seed: u64) -> Vec<String> {
    const PIECES: &[&str] = &[
        "a", "Z", "foo", "Bar", "x", "e", "E", "D", "d", "script", "style", "SCRIPT", "http",
        "https", "ftp", "www", "com", "org", "mailto", "0", "1", "42", "2024", "3", "-", "--", "+",
        ".", "..", "/", "//", "~", "_", "@", ":", "::", "<", "</", "<!", "<!--", "-->", "<?", ">",
        "/>", "&", "&#", "&#x", ";", "#", "=", "'", "\"", "\\", "?", "%", "!", ",", "(", ")", "[",
        "]", "{", "}", "|", "^", "`", "*", "$", " ", "  ", "\t", "\n", "\u{a0}", "\u{2009}",
        "\u{3000}", "é", "É", "ß", "İ", "ı", "Ω", "ω", "Ж", "ж", "北", "京", "ق", "א", "ह", "ि",
        "\u{301}", "\u{200b}", "\u{200d}", "🎉", "👍🏽", "½", "©", "ﬁ", "ǅ", "Ⅻ", "Ⓐ", "٣", "１",
        "Ａ", "\u{903}", "Ⱥ", "ẞ", "K",
    ];
    let mut rng = Rng(seed);
    (0..count)
        .map(|_| {
            let n = 1 + rng.below(40);
            (0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect()
        })
        .collect()
}

/// Texts covering the code points in `range`: each in the contexts whose behaviour
/// depends on its classes (alone, inside ASCII and non-ASCII words, after digits, in
/// hyphenated words, in tags and entities, lowercased, unaccented).
fn code_point_sweep(range: std::ops::RangeInclusive<u32>, per_text: usize) -> Vec<String> {
    let chars: Vec<char> = range
        .filter_map(char::from_u32)
        .filter(|&c| c != '\0')
        .collect();
    chars
        .chunks(per_text)
        .map(|chunk| {
            let mut s = String::new();
            for &c in chunk {
                s.push_str(&format!(
                    "{c} a{c}b 1{c} é{c}x {c}-{c} x-{c} <a {c}> &#x{c}; {c}{c}|"
                ));
            }
            s
        })
        .collect()
}

struct Outcome {
    texts: usize,
    computed: usize,
    fallbacks: Vec<usize>,
}

/// Computes every text in Rust, loads the vectors by binary COPY next to the texts, and
/// asserts PostgreSQL agrees on each (as tsvector and as text).
async fn compare(db: &TestDb, builder: &VectorBuilder, label: &str, texts: &[String]) -> Outcome {
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::query("DROP TABLE IF EXISTS tsv_check")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TEMP TABLE tsv_check (n int PRIMARY KEY, t text NOT NULL, v tsvector NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();

    let mut fallbacks = Vec::new();
    let mut ours: Vec<Option<Tsv>> = Vec::with_capacity(texts.len());
    for (n, text) in texts.iter().enumerate() {
        let v = builder.vector(text);
        if v.is_none() {
            fallbacks.push(n);
        }
        ours.push(v);
    }

    // Binary COPY in chunks of about 8 MB, as the load stage would send them.
    let mut out = BytesMut::new();
    let header = |out: &mut BytesMut| {
        out.put_slice(b"PGCOPY\n\xff\r\n\0");
        out.put_i32(0);
        out.put_i32(0);
    };
    header(&mut out);
    let mut pending = 0;
    for (n, (text, v)) in texts.iter().zip(&ours).enumerate() {
        let Some(v) = v else { continue };
        out.put_i16(3);
        out.put_i32(4);
        out.put_i32(n as i32);
        out.put_i32(text.len() as i32);
        out.put_slice(text.as_bytes());
        v.encode_copy_field(&mut out);
        pending += 1;
        if out.len() > 8 << 20 {
            out.put_i16(-1);
            let mut copy = conn
                .copy_in_raw("COPY tsv_check (n, t, v) FROM STDIN (FORMAT binary)")
                .await
                .unwrap();
            copy.send(std::mem::take(&mut out).freeze()).await.unwrap();
            copy.finish().await.unwrap();
            header(&mut out);
            pending = 0;
        }
    }
    if pending > 0 {
        out.put_i16(-1);
        let mut copy = conn
            .copy_in_raw("COPY tsv_check (n, t, v) FROM STDIN (FORMAT binary)")
            .await
            .unwrap();
        copy.send(out.freeze()).await.unwrap();
        copy.finish().await.unwrap();
    }

    // The vectors as PostgreSQL stored them from our binary form, against its own.
    let bad: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT n, v::text, civicload_page_vector(t)::text FROM tsv_check
         WHERE v IS DISTINCT FROM civicload_page_vector(t)
            OR v::text IS DISTINCT FROM civicload_page_vector(t)::text
         ORDER BY n LIMIT 5",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    for (n, ours, server) in &bad {
        eprintln!(
            "MISMATCH ({label}) text {:?}\n  civicload: {}\n  server:    {}",
            truncate(&texts[*n as usize]),
            truncate(ours),
            truncate(server)
        );
    }
    assert!(
        bad.is_empty(),
        "{label}: binary-COPY'd vectors differ from PostgreSQL's"
    );

    // And our text form against the server's text form.
    let server: Vec<(i32, String)> =
        sqlx::query_as("SELECT n, civicload_page_vector(t)::text FROM tsv_check ORDER BY n")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    let computed = server.len();
    assert_eq!(computed, texts.len() - fallbacks.len());
    for (n, server) in server {
        let ours = ours[n as usize].as_ref().unwrap().to_text();
        assert!(
            ours == server,
            "{label}: text form differs for {:?}\n  civicload: {}\n  server:    {}",
            truncate(&texts[n as usize]),
            truncate(&ours),
            truncate(&server)
        );
    }
    // The phrase keys (migration 0014) from our vector, against the server's from its own.
    let server_keys: Vec<(i32, Vec<i32>)> = sqlx::query_as(
        "SELECT n, civicload_phrase_keys(civicload_page_vector(t)) FROM tsv_check ORDER BY n",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    for (n, server) in server_keys {
        let ours = ours[n as usize].as_ref().unwrap().phrase_keys();
        assert!(
            ours == server,
            "{label}: phrase keys differ for {:?}\n  civicload: {ours:?}\n  server:    {server:?}",
            truncate(&texts[n as usize]),
        );
    }
    Outcome {
        texts: texts.len(),
        computed,
        fallbacks,
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 300 {
        s.to_string()
    } else {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &s[..end], s.len())
    }
}

fn report(label: &str, o: &Outcome) -> f64 {
    let share = o.fallbacks.len() as f64 / o.texts.max(1) as f64;
    eprintln!(
        "{label}: {} texts, {} computed in Rust and identical to PostgreSQL, {} left to PostgreSQL ({:.3}%)",
        o.texts,
        o.computed,
        o.fallbacks.len(),
        100.0 * share
    );
    share
}

async fn builder(db: &TestDb) -> VectorBuilder {
    let started = Instant::now();
    let b = VectorBuilder::from_server(&db.pool)
        .await
        .expect("read the server's rules");
    eprintln!(
        "rules: {} (from_server took {:.2} s)",
        b.summary(),
        started.elapsed().as_secs_f64()
    );
    b
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_vectors_equal_postgres_on_corpus_and_adversarial_texts() {
    let db = TestDb::new("diff", true).await;
    let builder = builder(&db).await;

    // The generated corpus: civic vocabulary, accents, scripts, emoji, e-mails, URLs,
    // amounts, empty and very large pages.
    let corpus = corpus_texts(3_000, 8, 7);
    assert!(corpus.len() >= 3_000);
    assert!(
        corpus.iter().any(|t| t.is_empty()),
        "the corpus has empty pages"
    );
    assert!(
        corpus.iter().any(|t| t.len() > 150_000),
        "the corpus has very large pages"
    );
    let o = compare(&db, &builder, "generated corpus", &corpus).await;
    let share = report("generated corpus", &o);
    assert!(
        share < 0.02,
        "{:.2}% of corpus pages fell back to PostgreSQL",
        100.0 * share
    );

    let adversarial = adversarial();
    let o = compare(&db, &builder, "adversarial", &adversarial).await;
    report("adversarial", &o);
    // Nothing here needs the server (every construct is reproduced), but the code points
    // the rules do not cover: planes 4-13 (unassigned) and 15-16 (private use).
    let unprobed = |t: &str| {
        t.chars()
            .any(|c| matches!(c as u32, 0x40000..=0xDFFFF | 0xF0000..=0x10FFFF))
    };
    let left: Vec<String> = o
        .fallbacks
        .iter()
        .filter(|&&i| !unprobed(&adversarial[i]))
        .map(|&i| truncate(&adversarial[i]))
        .collect();
    assert!(left.is_empty(), "unexpected fallbacks: {left:?}");
    assert!(
        builder.vector("private \u{F0041} use").is_none(),
        "a code point the rules do not cover is for the server"
    );

    let fuzz = fuzz(4_000, 0x5eed_1234_abcd_0001);
    let o = compare(&db, &builder, "random compositions", &fuzz).await;
    report("random compositions", &o);

    // Every code point of the Basic Multilingual Plane, in every class-sensitive context.
    let sweep = code_point_sweep(0x01..=0xFFFF, 400);
    let o = compare(&db, &builder, "BMP sweep", &sweep).await;
    report("BMP sweep", &o);

    // The documented fallbacks.
    assert!(
        builder.vector("a\0b").is_none(),
        "U+0000 is for the server to reject"
    );
    // (A lowercase that outgrows 2047 bytes needs Ⱥ or Ⱦ, which unaccent turns into A and
    // T first: the unit tests cover that fallback with synthetic rules.)
    let huge: String = (0..70_000).map(|i| format!("{:016x} ", i * 7919)).collect();
    assert!(
        builder.vector(&huge).is_none(),
        "a vector over 1 MB is an error in PostgreSQL, not ours to produce"
    );
    db.pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_builder_refuses_a_database_whose_vector_expression_it_cannot_vouch_for() {
    // No civicload schema at all.
    let db = TestDb::new("bare", false).await;
    let err = VectorBuilder::from_server(&db.pool).await.unwrap_err();
    assert!(matches!(err, VectorError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("civicload_page_vector"), "{err}");
    db.pool.close().await;

    // The schema, but 'simple' now drops stop words: the reproduction would be wrong.
    let db = TestDb::new("stop", true).await;
    sqlx::query("CREATE TEXT SEARCH DICTIONARY tsv_stop (TEMPLATE = pg_catalog.simple, STOPWORDS = english)")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("ALTER TEXT SEARCH CONFIGURATION simple ALTER MAPPING FOR asciiword WITH tsv_stop")
        .execute(&db.pool)
        .await
        .unwrap();
    let err = VectorBuilder::from_server(&db.pool).await.unwrap_err();
    assert!(matches!(err, VectorError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("asciiword"), "{err}");
    db.pool.close().await;
}

/// The long run: a 50,000-page corpus, 50,000 random compositions and every code point.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "long: cargo test --release --test tsvector_diff -- --ignored --nocapture"]
async fn rust_vectors_equal_postgres_at_scale() {
    let db = TestDb::new("scale", true).await;
    let builder = builder(&db).await;
    let corpus = corpus_texts(50_000, 60, 11);
    for (i, chunk) in corpus.chunks(10_000).enumerate() {
        let o = compare(&db, &builder, "corpus", chunk).await;
        let share = report(&format!("generated corpus, part {}", i + 1), &o);
        assert!(share < 0.02);
    }
    for seed in 1..=10u64 {
        let o = compare(
            &db,
            &builder,
            "fuzz",
            &fuzz(5_000, seed * 0x9e37_79b9_7f4a_7c15),
        )
        .await;
        report(&format!("random compositions, seed {seed}"), &o);
    }
    let sweep = code_point_sweep(0x01..=0x10FFFF, 400);
    for (i, chunk) in sweep.chunks(500).enumerate() {
        let o = compare(&db, &builder, "sweep", chunk).await;
        report(&format!("code point sweep, part {}", i + 1), &o);
    }
    db.pool.close().await;
}
