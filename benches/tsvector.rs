//! Throughput of civicload's Rust search vectors (`stages::tsvector`) on generated
//! civic.band pages, with PostgreSQL's own `civicload_page_vector` on the same pages
//! measured once for reference (printed before the criterion groups).
//!
//! Needs the local PostgreSQL (scripts/setup.sh): the rules are read from the server, as
//! in production. `DATABASE_URL` picks another server; the default is database
//! `tsv_bench` on the local socket (created and migrated on first use).
//!
//! ```sh
//! cargo bench --bench tsvector
//! ```
// The bench talks to PostgreSQL directly with sqlx (clippy.toml steers the program to stages::store::sql).
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use stages::tsvector::VectorBuilder;

/// Pages of a generated corpus (fixtures/generate.py + dump.py), cached under target/.
fn pages() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/tsv-bench-corpus");
    let dump = dir.join("pages.jsonl");
    if !dump.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let ok = Command::new("python3")
            .arg(root.join("fixtures/generate.py"))
            .args([
                "--out",
                dir.to_str().unwrap(),
                "--pages",
                "5000",
                "--municipalities",
                "10",
            ])
            .args(["--seed", "42"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "fixtures/generate.py failed");
        let out = Command::new("python3")
            .arg(root.join("fixtures/dump.py"))
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "fixtures/dump.py failed");
        std::fs::write(&dump, &out.stdout).unwrap();
    }
    std::fs::read_to_string(&dump)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap_or("").to_string()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let options = match std::env::var("DATABASE_URL") {
        Ok(url) => stages::store::connect_options(Some(&url)).unwrap(),
        Err(_) => stages::store::connect_options(None)
            .unwrap()
            .database("tsv_bench"),
    };
    let pool = rt
        .block_on(stages::store::connect(options, 8))
        .expect("connect to PostgreSQL");
    let started = Instant::now();
    let builder = rt
        .block_on(VectorBuilder::from_server(&pool))
        .expect("read the rules");
    eprintln!(
        "from_server: {:.2} s ({})",
        started.elapsed().as_secs_f64(),
        builder.summary()
    );

    let all = pages();
    // Typical pages: the brief's reference is PostgreSQL at ~200 µs per 2.4 KB page.
    let typical: Vec<String> = all
        .iter()
        .filter(|t| (1_500..=3_500).contains(&t.len()))
        .take(2_000)
        .cloned()
        .collect();
    let sample: Vec<String> = all.iter().take(2_000).cloned().collect();

    // TSV_ROUNDS=n: only run vector() n times over the typical pages and stop, for
    // `perf stat` (instructions per page do not depend on other load on the machine).
    if let Some(rounds) = std::env::var("TSV_ROUNDS")
        .ok()
        .and_then(|r| r.parse::<usize>().ok())
    {
        for _ in 0..rounds {
            for t in typical.iter() {
                black_box(builder.vector(black_box(t)));
            }
        }
        eprintln!("ran {rounds} rounds over {} typical pages", typical.len());
        std::process::exit(0);
    }

    // The reference: CPU time per page of PostgreSQL's own civicload_page_vector (its
    // backend's run time, from /proc/PID/schedstat, minus the same query without the
    // vector) against civicload's (this thread's run time). CPU time, not wall time,
    // so that other load on the machine does not skew the ratio.
    for (label, set) in [("typical", &typical), ("mixed", &sample)] {
        let kb = set.iter().map(String::len).sum::<usize>() as f64 / set.len() as f64 / 1024.0;
        let (pg_cpu, pg_wall) = rt.block_on(postgres_cpu_per_page(&pool, set));
        let rounds = 5;
        let wall = Instant::now();
        let before = cpu_ns("/proc/thread-self/schedstat");
        for _ in 0..rounds {
            for t in set.iter() {
                black_box(builder.vector(black_box(t)));
            }
        }
        let ours = (cpu_ns("/proc/thread-self/schedstat") - before) as f64
            / 1e3
            / (rounds * set.len()) as f64;
        let ours_wall = wall.elapsed().as_secs_f64() * 1e6 / (rounds * set.len()) as f64;
        eprintln!(
            "{label} pages ({} pages, {kb:.1} KB mean), CPU µs/page: PostgreSQL {pg_cpu:.1} (wall {pg_wall:.1}), civicload {ours:.1} (wall {ours_wall:.1}): {:.1}x faster",
            set.len(),
            pg_cpu / ours
        );
    }
    let fallbacks = all.iter().filter(|t| builder.vector(t).is_none()).count();
    eprintln!(
        "fallbacks to PostgreSQL: {fallbacks} of {} pages",
        all.len()
    );

    for (label, set) in [("typical pages", &typical), ("mixed pages", &sample)] {
        let bytes: usize = set.iter().map(String::len).sum();
        let mut group = c.benchmark_group(format!("tsvector/{label}"));
        group.sample_size(20);
        group.throughput(Throughput::Elements(set.len() as u64));
        group.bench_function("vector", |b| {
            b.iter(|| {
                for t in set.iter() {
                    black_box(builder.vector(black_box(t)));
                }
            })
        });
        group.bench_function("vector+encode_binary", |b| {
            let mut out = BytesMut::with_capacity(bytes * 2);
            b.iter(|| {
                out.clear();
                for t in set.iter() {
                    if let Some(v) = builder.vector(black_box(t)) {
                        v.encode_copy_field(&mut out);
                    }
                }
                black_box(out.len())
            })
        });
        // Phrase keys (migration 0014) on top of the vector, as the transform computes them.
        group.bench_function("vector+phrase_keys", |b| {
            b.iter(|| {
                for t in set.iter() {
                    if let Some(v) = builder.vector(black_box(t)) {
                        black_box(v.phrase_keys());
                    }
                }
            })
        });
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function("vector (bytes)", |b| {
            b.iter(|| {
                for t in set.iter() {
                    black_box(builder.vector(black_box(t)));
                }
            })
        });
        group.finish();
    }
    rt.block_on(pool.close());
}

/// Run time in nanoseconds from a schedstat file (its first field).
fn cpu_ns(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// PostgreSQL's CPU (and wall) microseconds per page for civicload_page_vector, best of
/// three, net of the same query without the vector.
async fn postgres_cpu_per_page(pool: &sqlx::PgPool, set: &[String]) -> (f64, f64) {
    let mut conn = pool.acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let stat = format!("/proc/{pid}/schedstat");
    let with = best_of_three(
        &mut conn,
        &stat,
        set,
        "SELECT sum(length(civicload_page_vector(t)))::bigint FROM unnest($1::text[]) t",
    )
    .await;
    let without = best_of_three(
        &mut conn,
        &stat,
        set,
        "SELECT sum(length(t))::bigint FROM unnest($1::text[]) t",
    )
    .await;
    let n = set.len() as f64;
    ((with.0 - without.0) / n, (with.1 - without.1) / n)
}

/// Best (CPU µs, wall µs) of three runs of `sql` over `set` on this backend.
async fn best_of_three(
    conn: &mut sqlx::PgConnection,
    stat: &str,
    set: &[String],
    sql: &str,
) -> (f64, f64) {
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let before = cpu_ns(stat);
        let wall = Instant::now();
        let _: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(set)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        best.0 = best.0.min((cpu_ns(stat) - before) as f64 / 1e3);
        best.1 = best.1.min(wall.elapsed().as_secs_f64() * 1e6);
    }
    best
}

criterion_group!(benches, bench);
criterion_main!(benches);
