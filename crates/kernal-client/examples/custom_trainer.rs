//! A custom trainer: the same hub connection loop as `kernal trainer`, with
//! your own learning logic. This one trains the built-in digits network with
//! candle's AdamW optimiser instead of SGD, on the whole training set.
//!
//!     cargo run --release -p kernal-client --example custom_trainer -- ws://127.0.0.1:5001 my_name my_token 10
//!
//! Arguments: hub URL, trainer name, token, and how many versions to train on.

use candle_core::{Device, Tensor};
use candle_nn::Optimizer;
use kernal_client::connection::{self, ClientOptions};
use kernal_client::data::{self, Dataset};
use kernal_client::model::{MlpSpec, NetError};
use kernal_client::protocol::ModelLayout;
use kernal_client::{EvalReport, Learner, Trained};

struct AdamLearner {
    spec: MlpSpec,
    train: Dataset,
    test: Dataset,
}

impl AdamLearner {
    fn train_adam(&self, global: &[f32]) -> Result<(Vec<f32>, f64), NetError> {
        // The reference network's tensors and forward pass; only the
        // optimiser is this learner's own.
        let vars = self.spec.vars(global, &Device::Cpu)?;
        let mut opt = candle_nn::AdamW::new(
            vars.to_vec(),
            candle_nn::ParamsAdamW {
                lr: 0.003,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        let x = Tensor::from_slice(
            &self.train.features,
            (self.train.len(), self.train.dim),
            &Device::Cpu,
        )?;
        let y = Tensor::from_slice(&self.train.labels, self.train.len(), &Device::Cpu)?;
        let mut last = 0.0;
        for _ in 0..10 {
            let logits = MlpSpec::forward(&vars, &x)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            opt.backward_step(&loss)?;
            last = loss.to_scalar::<f32>()? as f64;
        }
        let mut flat = Vec::new();
        for v in &vars {
            flat.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        Ok((flat, last))
    }
}

impl Learner for AdamLearner {
    fn check_layout(&self, layout: &ModelLayout) -> Result<(), String> {
        if *layout == self.spec.layout() {
            Ok(())
        } else {
            Err("this example trains the 64-64-10 digits network only".into())
        }
    }

    fn train(&mut self, global: &[f32], _version: u64) -> Result<Trained, String> {
        let (weights, loss) = self.train_adam(global).map_err(|e| e.to_string())?;
        Ok(Trained {
            weights,
            num_examples: self.train.len() as u64,
            loss,
        })
    }

    fn evaluate(&mut self, global: &[f32], _version: u64) -> Result<Option<EvalReport>, String> {
        let e = self
            .spec
            .evaluate(global, &self.test)
            .map_err(|e| e.to_string())?;
        Ok(Some(EvalReport {
            specialty_accuracy: Some(e.accuracy),
            global_accuracy: Some(e.accuracy),
            loss: Some(e.loss),
            num_examples: e.examples as u64,
            ..Default::default()
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let hub = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "ws://127.0.0.1:5001".into());
    let name = args.get(2).cloned().unwrap_or_else(|| "custom_adam".into());
    let token = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "custom-token".into());
    let versions: u64 = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(10);
    let split = data::digits_split()?;
    let learner = AdamLearner {
        spec: MlpSpec {
            inputs: 64,
            hidden: 64,
            classes: 10,
        },
        train: split.train,
        test: split.test,
    };
    let mut opts = ClientOptions::new(&hub, &name, "all-digits", &token);
    opts.max_versions = Some(versions);
    let summary = connection::run(
        opts,
        learner,
        |e| println!("{}", serde_json::to_string(e).unwrap_or_default()),
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await?;
    eprintln!(
        "trained {} versions, {} acknowledged",
        summary.versions_trained, summary.acked
    );
    Ok(())
}
