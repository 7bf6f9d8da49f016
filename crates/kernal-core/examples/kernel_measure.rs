//! Measures the kernel model's training speed and learning curve on one
//! specialty's corpus, to size it for a small machine:
//!
//!     cargo run --release -p kernal-core --example kernel_measure -- D_MODEL LAYERS CONTEXT BATCH STEPS [LR] [SPECIALTY]
//!
//! Prints bytes per second of training and the held-out bits per byte
//! every tenth of the steps.

use std::time::Instant;

use kernal_core::kernel::{corpus, KernelSpec, KernelTrainSettings};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: f64| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let spec = KernelSpec {
        d_model: num(0, 64.0) as usize,
        layers: num(1, 2.0) as usize,
        context: num(2, 64.0) as usize,
    };
    let (batch, steps, lr) = (num(3, 16.0) as usize, num(4, 200.0) as usize, num(5, 3e-3));
    let specialty = a.get(6).map(String::as_str).unwrap_or("networking");
    let text = corpus::train_text(specialty)?;
    let held = corpus::heldout_text(specialty)?;
    let mut w = spec.init_weights(42);
    println!(
        "{spec:?}: {} parameters, batch {batch}, lr {lr}, {} threads",
        spec.layout().num_params(),
        candle_core::utils::get_num_threads()
    );
    let chunk = (steps / 10).max(1);
    let mut done = 0;
    let mut train_secs = 0.0;
    while done < steps {
        let s = KernelTrainSettings {
            steps: chunk,
            batch,
            window: spec.context,
            lr,
            weight_decay: 0.0,
            seed: done as u64,
        };
        let t = Instant::now();
        let (nw, loss) = spec.train(&w, &text, &s)?;
        train_secs += t.elapsed().as_secs_f64();
        w = nw;
        done += chunk;
        let t = Instant::now();
        let e = spec.bits_per_byte(&w, &held, 16)?;
        println!(
            "step {done:5}: train loss {loss:.3} bpb | held-out {:.3} bpb ({} bytes, {:.2} s) | {:.0} bytes/s training",
            e.bits_per_byte,
            e.bytes,
            t.elapsed().as_secs_f64(),
            (done * batch * spec.context) as f64 / train_secs
        );
    }
    Ok(())
}
