//! The reference network (an MLP: inputs -> hidden ReLU -> classes), defined
//! once with candle and used by the trainer to learn and by the hub to
//! evaluate each new global version.

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{Linear, Module, Optimizer};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::data::Dataset;
use crate::protocol::ModelLayout;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Shape(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpSpec {
    pub inputs: usize,
    pub hidden: usize,
    pub classes: usize,
}

/// Local training settings.
#[derive(Debug, Clone, Copy)]
pub struct TrainSettings {
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub accuracy: f64,
    pub loss: f64,
    pub examples: usize,
}

impl MlpSpec {
    pub fn layout(&self) -> ModelLayout {
        ModelLayout::new(vec![
            ("fc1.weight".into(), vec![self.hidden, self.inputs]),
            ("fc1.bias".into(), vec![self.hidden]),
            ("fc2.weight".into(), vec![self.classes, self.hidden]),
            ("fc2.bias".into(), vec![self.classes]),
        ])
    }

    /// The parameter count, or None where it overflows (an admin typo such as
    /// `classes: 1e15` must be refused, not allocated).
    pub fn checked_params(&self) -> Option<u64> {
        let (i, h, c) = (self.inputs as u64, self.hidden as u64, self.classes as u64);
        h.checked_mul(i)?
            .checked_add(h)?
            .checked_add(c.checked_mul(h)?)?
            .checked_add(c)
    }

    /// Refuses shapes that make no sense or more than `max_params` parameters.
    pub fn check(&self, max_params: u64) -> Result<(), String> {
        if self.inputs == 0 || self.hidden == 0 || self.classes < 2 {
            return Err(format!(
                "inputs and hidden must be at least 1 and classes at least 2 (got inputs {}, hidden {}, classes {})",
                self.inputs, self.hidden, self.classes
            ));
        }
        match self.checked_params() {
            Some(n) if n <= max_params => Ok(()),
            n => Err(format!(
                "inputs {}, hidden {} and classes {} make {} parameters; the limit (hub.max_model_params) is {max_params}",
                self.inputs,
                self.hidden,
                self.classes,
                n.map(|n| n.to_string()).unwrap_or_else(|| "more than 2^64".into())
            )),
        }
    }

    /// Recognises a layout produced by [`layout`](Self::layout).
    pub fn from_layout(layout: &ModelLayout) -> Option<MlpSpec> {
        let t = &layout.tensors;
        if t.len() != 4 || t[0].shape.len() != 2 || t[2].shape.len() != 2 {
            return None;
        }
        let spec = MlpSpec {
            inputs: t[0].shape[1],
            hidden: t[0].shape[0],
            classes: t[2].shape[0],
        };
        (spec.layout() == *layout).then_some(spec)
    }

    /// Deterministic initial weights: PyTorch's default `Linear` init,
    /// uniform in +-1/sqrt(fan_in), from a seeded generator.
    pub fn init_weights(&self, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(self.layout().num_params());
        let b1 = 1.0 / (self.inputs as f32).sqrt();
        for _ in 0..(self.hidden * self.inputs + self.hidden) {
            out.push(rng.gen_range(-b1..b1));
        }
        let b2 = 1.0 / (self.hidden as f32).sqrt();
        for _ in 0..(self.classes * self.hidden + self.classes) {
            out.push(rng.gen_range(-b2..b2));
        }
        out
    }

    /// The network's trainable tensors (fc1 weight and bias, fc2 weight and
    /// bias) from a flat buffer in layout order: what a custom learner with
    /// its own optimiser starts from.
    pub fn vars(&self, flat: &[f32], dev: &Device) -> Result<[Var; 4], NetError> {
        let n = self.layout().num_params();
        if flat.len() != n {
            return Err(NetError::Shape(format!(
                "weights have {} values, the network needs {n}",
                flat.len()
            )));
        }
        let (h, i, c) = (self.hidden, self.inputs, self.classes);
        let mut off = 0;
        let mut take = |shape: &[usize]| -> Result<Var, NetError> {
            let k: usize = shape.iter().product();
            let t = Tensor::from_slice(&flat[off..off + k], shape, dev)?;
            off += k;
            Ok(Var::from_tensor(&t)?)
        };
        Ok([take(&[h, i])?, take(&[h])?, take(&[c, h])?, take(&[c])?])
    }

    /// Logits of the network for a batch `x` (rows of features).
    pub fn forward(vars: &[Var; 4], x: &Tensor) -> Result<Tensor, NetError> {
        let fc1 = Linear::new(
            vars[0].as_tensor().clone(),
            Some(vars[1].as_tensor().clone()),
        );
        let fc2 = Linear::new(
            vars[2].as_tensor().clone(),
            Some(vars[3].as_tensor().clone()),
        );
        Ok(fc2.forward(&fc1.forward(x)?.relu()?)?)
    }

    fn check_data(&self, data: &Dataset) -> Result<(), NetError> {
        if data.dim != self.inputs {
            return Err(NetError::Shape(format!(
                "data has {} features, the model takes {}",
                data.dim, self.inputs
            )));
        }
        if let Some(l) = data.labels.iter().find(|l| **l as usize >= self.classes) {
            return Err(NetError::Shape(format!(
                "data has class {l}, the model has {} classes",
                self.classes
            )));
        }
        Ok(())
    }

    /// Trains from `weights` for `epochs` of mini-batch SGD on `data`;
    /// returns the trained weights and the mean training loss.
    pub fn train(
        &self,
        weights: &[f32],
        data: &Dataset,
        s: &TrainSettings,
    ) -> Result<(Vec<f32>, f64), NetError> {
        self.train_min_steps(weights, data, s, 0)
    }

    /// [`train`](Self::train), going on past `epochs` (reshuffling at each
    /// pass) until at least `min_steps` mini-batch steps are taken. Why: on
    /// a file of a few dozen rows two epochs are two to four steps, far too
    /// few for 30 versions to converge (`DEFAULT_MIN_STEPS` in the client).
    pub fn train_min_steps(
        &self,
        weights: &[f32],
        data: &Dataset,
        s: &TrainSettings,
        min_steps: usize,
    ) -> Result<(Vec<f32>, f64), NetError> {
        self.check_data(data)?;
        let dev = Device::Cpu;
        let vars = self.vars(weights, &dev)?;
        if data.is_empty() || s.epochs == 0 {
            return Ok((weights.to_vec(), 0.0));
        }
        let mut opt = candle_nn::SGD::new(vars.to_vec(), s.lr)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed);
        let mut order: Vec<usize> = (0..data.len()).collect();
        let (mut loss_sum, mut batches) = (0.0f64, 0usize);
        let bs = s.batch_size.max(1);
        let mut epoch = 0;
        while epoch < s.epochs || batches < min_steps {
            epoch += 1;
            order.shuffle(&mut rng);
            for chunk in order.chunks(bs) {
                if epoch > s.epochs && batches >= min_steps {
                    break;
                }
                let batch = data.subset(chunk);
                let x = Tensor::from_slice(&batch.features, (chunk.len(), data.dim), &dev)?;
                let y = Tensor::from_slice(&batch.labels, chunk.len(), &dev)?;
                let logits = Self::forward(&vars, &x)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
                opt.backward_step(&loss)?;
                loss_sum += loss.to_scalar::<f32>()? as f64;
                batches += 1;
            }
        }
        let mut out = Vec::with_capacity(weights.len());
        for v in &vars {
            out.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        Ok((out, loss_sum / batches.max(1) as f64))
    }

    /// Accuracy and mean cross-entropy of `weights` on `data`.
    pub fn evaluate(&self, weights: &[f32], data: &Dataset) -> Result<Evaluation, NetError> {
        self.check_data(data)?;
        if data.is_empty() {
            return Ok(Evaluation {
                accuracy: 0.0,
                loss: 0.0,
                examples: 0,
            });
        }
        let dev = Device::Cpu;
        let vars = self.vars(weights, &dev)?;
        let x = Tensor::from_slice(&data.features, (data.len(), data.dim), &dev)?;
        let y = Tensor::from_slice(&data.labels, data.len(), &dev)?;
        let logits = Self::forward(&vars, &x)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64;
        let pred = logits.argmax(D::Minus1)?;
        let correct = pred
            .eq(&y)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
        Ok(Evaluation {
            accuracy: correct / data.len() as f64,
            loss,
            examples: data.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data;

    #[test]
    fn central_training_learns_digits() {
        let split = data::digits_split().unwrap();
        let spec = MlpSpec {
            inputs: 64,
            hidden: 64,
            classes: 10,
        };
        let w0 = spec.init_weights(42);
        assert_eq!(w0, spec.init_weights(42));
        let before = spec.evaluate(&w0, &split.test).unwrap();
        let s = TrainSettings {
            epochs: 20,
            lr: 0.1,
            batch_size: 32,
            seed: 1,
        };
        let (w, loss) = spec.train(&w0, &split.train, &s).unwrap();
        let after = spec.evaluate(&w, &split.test).unwrap();
        assert!(loss.is_finite());
        assert!(
            after.accuracy > 0.9,
            "{} -> {}",
            before.accuracy,
            after.accuracy
        );
        assert!(MlpSpec::from_layout(&spec.layout()) == Some(spec));
    }

    #[test]
    fn min_steps_go_on_past_the_epochs_of_a_tiny_file() {
        let split = data::digits_split().unwrap();
        let tiny = split.train.subset(&(0..40).collect::<Vec<_>>());
        let spec = MlpSpec {
            inputs: 64,
            hidden: 16,
            classes: 10,
        };
        let w0 = spec.init_weights(1);
        let s = TrainSettings {
            epochs: 1,
            lr: 0.1,
            batch_size: 32,
            seed: 3,
        };
        // No floor: exactly `train` (2 steps here).
        assert_eq!(
            spec.train_min_steps(&w0, &tiny, &s, 0).unwrap(),
            spec.train(&w0, &tiny, &s).unwrap()
        );
        // With one, more steps: the file is learnt better.
        let (one, _) = spec.train(&w0, &tiny, &s).unwrap();
        let (many, _) = spec.train_min_steps(&w0, &tiny, &s, 40).unwrap();
        let l1 = spec.evaluate(&one, &tiny).unwrap().loss;
        let l40 = spec.evaluate(&many, &tiny).unwrap().loss;
        assert!(l40 < l1 - 0.2, "{l1} -> {l40}");
    }
}
