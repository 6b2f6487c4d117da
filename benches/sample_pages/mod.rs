//! Realistic source rows for the criterion benches: what one page of civic.band's table
//! JSON API holds (Datasette 1.0a28, `_shape=objects`), generated deterministically.
//!
//! Shaped like fixtures/generate.py's corpus: ~2.4 KB of text per page on average, with
//! accented names and other scripts; escaped the way Datasette's `json.dumps` does it
//! (`ensure_ascii`: every non-ASCII character as `\uXXXX`, newlines as `\n`), because that
//! escaping is what the transform must undo on the hot path; `entities_json` and
//! `votes_json` as JSON strings holding JSON, on ~80% of rows.

use serde_json::value::RawValue;

#[rustfmt::skip]
const WORDS: &[&str] = &[
    "council", "motion", "seconded", "approved", "ordinance", "resolution", "budget",
    "hearing", "public", "comment", "zoning", "variance", "parcel", "sidewalk", "utility",
    "stormwater", "consent", "agenda", "minutes", "adjourned", "quorum", "commission",
    "planning", "heritage", "tree", "permit", "appeal", "staff", "report", "amendment",
    "café", "façade", "résumé", "Núñez", "Zürich", "Müller", "Guzmán", "São", "naïve",
    "coöperate", "Ærø", "Łódź", "Øresund", "piñata", "crème", "brûlée", "Ελληνικά",
    "Русский", "中文", "한국어", "עברית", "हिन्दी", "العربية", "🎉", "PlanningCommission",
    "e-mail", "long-term", "U.S.", "CEQA", "$1,234", "$841,620", "24-326",
    "clerk@city.gov", "https://example.org/agenda?id=42",
];
#[rustfmt::skip]
const MEETINGS: &[&str] = &[
    "CityCouncil", "PlanningCommission", "BudgetAndFinanceCommittee", "ArtsCommission",
    "ParksAndRecreation", "ZoningBoardOfAppeals",
];

/// A tiny deterministic generator (SplitMix64): the benches need no `rand` API.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A JSON string literal escaped like Python's `json.dumps(ensure_ascii=True)`.
fn json_ascii(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8 + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{:04x}", u));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Page text of about `target` bytes: a header line, then sentences and paragraphs.
fn page_text(rng: &mut Rng, header: &str, target: usize) -> String {
    let mut text = String::with_capacity(target + 64);
    text.push_str(header);
    text.push('\n');
    while text.len() < target {
        let words = 6 + rng.below(18);
        for i in 0..words {
            let w = WORDS[rng.below(WORDS.len())];
            if i == 0 {
                let mut cs = w.chars();
                if let Some(f) = cs.next() {
                    text.extend(f.to_uppercase());
                    text.push_str(cs.as_str());
                }
            } else {
                text.push(' ');
                text.push_str(w);
            }
        }
        text.push_str(if rng.below(8) == 0 { ".\n\n" } else { ". " });
    }
    text
}

/// `n` source rows as they arrive in a page of the table API (one `RawValue` each).
pub fn rows(n: usize) -> Vec<Box<RawValue>> {
    let mut rng = Rng(0x00C1_71CB_A4D0);
    let mut out = Vec::with_capacity(n);
    let mut meeting = MEETINGS[0];
    let mut date = (2019, 1, 1);
    let mut pages_in_meeting = 1;
    let mut page = 0;
    for i in 0..n {
        if page == pages_in_meeting {
            meeting = MEETINGS[rng.below(MEETINGS.len())];
            date = (
                2005 + rng.below(21) as i32,
                1 + rng.below(12),
                1 + rng.below(28),
            );
            pages_in_meeting = 5 + rng.below(76);
            page = 0;
        }
        page += 1;
        let date_s = format!("{:04}-{:02}-{:02}", date.0, date.1, date.2);
        let header =
            format!("SPRINGFIELD — {meeting} — {date_s} — Page {page} of {pages_in_meeting}");
        // Lognormal-ish sizes around ~2.4 KB: mostly 1-4 KB, some short, a few long.
        let target = match rng.below(20) {
            0 => 0,
            1..=2 => 400 + rng.below(600),
            3..=16 => 1500 + rng.below(2200),
            _ => 3500 + rng.below(4500),
        };
        let text = if target == 0 {
            String::new()
        } else {
            page_text(&mut rng, &header, target)
        };
        let id = format!("{:012x}", rng.next() >> 16);
        let image = format!("/_agendas/{meeting}/{date_s}/{page}.png");
        let mut row = format!(
            "{{\"id\": \"{id}\", \"meeting\": \"{meeting}\", \"date\": \"{date_s}\", \"page\": {page}, \"text\": {}, \"page_image\": {}",
            json_ascii(&text),
            json_ascii(&image)
        );
        if i % 5 != 4 {
            let entities = format!(
                "[{{\"name\": \"{}\", \"type\": \"PERSON\"}}, {{\"name\": \"Springfield\", \"type\": \"GPE\"}}]",
                ["María Núñez", "Jürgen Müller", "Zoë Brontë", "Li Wei"][rng.below(4)]
            );
            let votes = if rng.below(3) == 0 {
                "[{\"motion\": \"approve\", \"ayes\": 5, \"noes\": 0}]".to_string()
            } else {
                "[]".to_string()
            };
            row.push_str(&format!(
                ", \"entities_json\": {}, \"votes_json\": {}",
                json_ascii(&entities),
                json_ascii(&votes)
            ));
        }
        row.push('}');
        out.push(RawValue::from_string(row).expect("generated rows are valid JSON"));
    }
    out
}

/// Total bytes of row JSON, for throughput in bytes.
#[allow(dead_code)]
pub fn json_bytes(rows: &[Box<RawValue>]) -> usize {
    rows.iter().map(|r| r.get().len()).sum()
}
