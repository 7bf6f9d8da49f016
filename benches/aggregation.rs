//! Fold throughput of each aggregation strategy on flat f32 buffers, in GB/s
//! of update bytes folded: `cargo bench --bench aggregation`.
//!
//! `stream_fedavg` is what the hub does for fedavg-like strategies: each
//! update is folded into an accumulator straight from its safetensors bytes
//! as it arrives. The others fold a buffer of decoded deltas at once.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kernal_hub::aggregation::{
    aggregate, AggregationSettings, Contribution, ServerState, Strategy,
};
use kernal_hub::protocol::ModelLayout;

fn settings(strategy: Strategy) -> AggregationSettings {
    AggregationSettings {
        strategy,
        min_updates: 10,
        round_timeout_secs: 10.0,
        max_staleness: 10,
        staleness_exponent: 0.5,
        server_lr: 1.0,
        momentum: 0.9,
        beta2: 0.99,
        tau: 1e-3,
        trim_fraction: 0.2,
        clip_norm: 0.0,
        clip_quantile: 0.0,
        clip_lr: 0.2,
        clip_multiplier: 1.0,
        tensor_clip_multiplier: 0.0,
        max_weight_ratio: 0.0,
        screen_max_share: 0.0,
        max_num_examples: 1_000_000,
        max_update_norm: 0.0,
        normalisation_wait_secs: 5.0,
        integer_rules: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let params = 1_000_000usize;
    let k = 10usize;
    let deltas: Vec<Vec<f32>> = (0..k)
        .map(|j| {
            (0..params)
                .map(|i| ((i * 7 + j * 13) % 101) as f32 * 1e-3)
                .collect()
        })
        .collect();
    let mut g = c.benchmark_group("fold_10x1M");
    g.throughput(Throughput::Bytes((k * params * 4) as u64));
    g.sample_size(10);
    for strategy in [
        Strategy::Fedavg,
        Strategy::Fedavgm,
        Strategy::Fedadam,
        Strategy::Median,
        Strategy::TrimmedMean,
    ] {
        let s = settings(strategy);
        g.bench_with_input(
            BenchmarkId::new("strategy", strategy.as_str()),
            &s,
            |b, s| {
                let mut weights = vec![0.0f32; params];
                let mut state = ServerState::default();
                b.iter(|| {
                    let contribs: Vec<Contribution<'_>> = deltas
                        .iter()
                        .map(|d| Contribution {
                            delta: d,
                            num_examples: 100,
                            staleness: 1,
                            scale: 1.0,
                        })
                        .collect();
                    aggregate(&mut weights, &contribs, s, &mut state)
                });
            },
        );
    }
    let layout = ModelLayout::new(vec![("weights".into(), vec![params])]);
    let encoded: Vec<Vec<u8>> = deltas
        .iter()
        .map(|d| layout.encode(d, None).unwrap())
        .collect();
    g.bench_function("stream_fedavg_from_bytes", |b| {
        let mut acc = vec![0.0f32; params];
        b.iter(|| {
            for e in &encoded {
                layout.accumulate(e, &mut acc, 0.1).unwrap();
            }
        });
    });
    g.bench_function("validate_from_bytes", |b| {
        b.iter(|| {
            for e in &encoded {
                layout.validate(e).unwrap();
            }
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
