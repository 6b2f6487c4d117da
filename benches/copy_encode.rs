//! Criterion bench of the load hot path on the client side: binary COPY encoding of a
//! 1000-page Arrow batch, `stages::copy::encode_pages`. Reported in MB/s of COPY stream
//! produced (bytes); `cargo bench --bench copy_encode`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use stages::copy::encode_pages;
use stages::transform::transform_rows;

mod sample_pages;

fn copy_encode(c: &mut Criterion) {
    let rows = sample_pages::rows(1000);
    let batch = transform_rows(&rows, None).rows;
    assert_eq!(batch.num_rows(), 1000);
    let encoded_len = encode_pages(&batch).len();

    let mut group = c.benchmark_group("copy_encode");
    group.throughput(Throughput::Bytes(encoded_len as u64));
    group.bench_function("binary_copy_1000_pages", |b| {
        b.iter(|| encode_pages(black_box(&batch)))
    });
    group.finish();
}

criterion_group!(benches, copy_encode);
criterion_main!(benches);
