//! Criterion bench of the transform hot path: one page of 1000 source rows (JSON, as
//! Datasette sends them) into an Arrow page batch, `stages::transform::transform_rows`.
//! Reported in rows/s (elements); `cargo bench --bench transform`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use stages::transform::transform_rows;

mod sample_pages;

fn transform(c: &mut Criterion) {
    let rows = sample_pages::rows(1000);
    let check = transform_rows(&rows, None);
    assert_eq!(
        check.rows.num_rows(),
        1000,
        "every generated row must be a page"
    );
    assert!(check.rejects.is_empty());

    let mut group = c.benchmark_group("transform");
    group.throughput(Throughput::Elements(rows.len() as u64));
    group.bench_function("json_page_1000_rows_to_arrow", |b| {
        b.iter(|| transform_rows(black_box(&rows), None))
    });
    group.finish();
}

criterion_group!(benches, transform);
criterion_main!(benches);
