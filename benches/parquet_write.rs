//! Spool write speed: one 1000-page batch (civic.band-like text, ~2 KB a page) encoded as
//! a zstd Parquet file with its metadata, the CPU work the spool stage adds per batch.
//! Throughput is in MB of page text and columns in (the Arrow buffers), per second.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::value::RawValue;
use stages::transform::PageBuilder;
use stages::{DocumentType, JobKey, PageBatch};

const WORDS: &[&str] = &[
    "council",
    "motion",
    "seconded",
    "approved",
    "budget",
    "ordinance",
    "café",
    "Núñez",
    "Zürich",
    "$1,234",
    "clerk@city.gov",
    "https://city.gov/agenda",
    "PlanningCommission",
    "zoning",
    "variance",
    "public",
    "hearing",
    "市议会",
    "совет",
    "résumé",
    "—",
    "amendment",
];

fn batch(pages: usize) -> PageBatch {
    let mut builder = PageBuilder::new();
    let mut state = 0x2545_f491_u64;
    for i in 0..pages {
        let mut text = format!(
            "CITY — CityCouncil — 2024-03-0{} — Page {} of {pages}\n",
            i % 9 + 1,
            i + 1
        );
        while text.len() < 2000 {
            // xorshift: deterministic, varied text that compresses like real pages.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            text.push_str(WORDS[(state % WORDS.len() as u64) as usize]);
            text.push(' ');
        }
        let row = serde_json::json!({
            "id": format!("{:012x}", state ^ i as u64), "meeting": "CityCouncil",
            "date": format!("2024-03-0{}", i % 9 + 1), "page": i + 1, "text": text,
            "page_image": format!("/CityCouncil/2024-03-0{}/{}.png", i % 9 + 1, i + 1),
            "entities_json": "[]", "votes_json": null
        })
        .to_string();
        builder.push(&RawValue::from_string(row).expect("valid JSON"), None);
    }
    let t = builder.finish();
    PageBatch {
        job: Arc::new(JobKey {
            job_id: 1,
            municipality_id: 1,
            subdomain: "bench.ca".into(),
            document_type: DocumentType::Minutes,
        }),
        seq: 1,
        cursor_after: None,
        last: false,
        fetched: pages,
        rows: t.rows,
        rejects: t.rejects,
        fetch_time: Duration::ZERO,
    }
}

fn parquet_write(c: &mut Criterion) {
    let b = batch(1000);
    assert_eq!(b.rows.num_rows(), 1000);
    let input = b.rows.get_array_memory_size() as u64;
    let mut group = c.benchmark_group("spool");
    group.throughput(Throughput::Bytes(input));
    group.sample_size(30);
    group.bench_function("parquet_write_1000_pages", |bench| {
        bench.iter(|| stages::spool::encode(&b, 0).expect("encodes"))
    });
    group.finish();
    let (bytes, _) = stages::spool::encode(&b, 0).expect("encodes");
    println!(
        "1000 pages: {:.2} MB of Arrow buffers -> {:.2} MB Parquet (zstd)",
        input as f64 / 1e6,
        bytes.len() as f64 / 1e6
    );
}

criterion_group!(benches, parquet_write);
criterion_main!(benches);
