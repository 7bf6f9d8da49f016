//! The kernel model: a byte-level (vocabulary 256) decoder-only transformer
//! with learned token and position embeddings, pre-norm blocks of causal
//! self-attention and a GELU MLP, a final layer norm and an output head
//! tied to the token embedding. Its weights are one flat f32 buffer in a
//! [`ModelLayout`] whose tensor names are PyTorch `state_dict` keys, so a
//! PyTorch module of the same shape loads them as they are.

use candle_core::{Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};

use crate::protocol::ModelLayout;

/// Bytes.
pub const VOCAB: usize = 256;
/// Width of one attention head: the number of heads is `d_model / HEAD_DIM`,
/// so the layout alone says the architecture.
pub const HEAD_DIM: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Shape(String),
    #[error("{0}")]
    Input(String),
}

/// The built-in `kernel` model's sizes (35,712 parameters), chosen by
/// measurement (`examples/kernel_measure`) for three trainers and a hub on
/// two cores: d_model 64 trained 3.5x fewer bytes per second for no lower
/// bits per byte at 200 steps, a 32-byte context no faster per byte.
pub const DEFAULT_SPEC: KernelSpec = KernelSpec {
    d_model: 32,
    layers: 2,
    context: 64,
};

/// The architecture's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSpec {
    pub d_model: usize,
    pub layers: usize,
    /// Longest context (bytes) the position embedding covers.
    pub context: usize,
}

/// One block's tensors, as candle variables.
pub struct BlockVars {
    pub ln1_w: Var,
    pub ln1_b: Var,
    pub qkv_w: Var,
    pub qkv_b: Var,
    pub proj_w: Var,
    pub proj_b: Var,
    pub ln2_w: Var,
    pub ln2_b: Var,
    pub fc_w: Var,
    pub fc_b: Var,
    pub out_w: Var,
    pub out_b: Var,
}

/// The whole network's tensors, in layout order.
pub struct KernelVars {
    pub tok_emb: Var,
    pub pos_emb: Var,
    pub blocks: Vec<BlockVars>,
    pub ln_f_w: Var,
    pub ln_f_b: Var,
}

impl KernelVars {
    /// Every variable in layout order (what the optimiser updates and what
    /// is flattened back).
    pub fn all(&self) -> Vec<Var> {
        let mut v = vec![self.tok_emb.clone(), self.pos_emb.clone()];
        for b in &self.blocks {
            v.extend([
                b.ln1_w.clone(),
                b.ln1_b.clone(),
                b.qkv_w.clone(),
                b.qkv_b.clone(),
                b.proj_w.clone(),
                b.proj_b.clone(),
                b.ln2_w.clone(),
                b.ln2_b.clone(),
                b.fc_w.clone(),
                b.fc_b.clone(),
                b.out_w.clone(),
                b.out_b.clone(),
            ]);
        }
        v.extend([self.ln_f_w.clone(), self.ln_f_b.clone()]);
        v
    }

    /// The flat weights again.
    pub fn flatten(&self) -> Result<Vec<f32>, KernelError> {
        let mut out = Vec::new();
        for v in self.all() {
            out.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

impl KernelSpec {
    pub fn heads(&self) -> usize {
        self.d_model / HEAD_DIM
    }

    pub fn layout(&self) -> ModelLayout {
        let d = self.d_model;
        let mut t = vec![
            ("tok_emb.weight".to_string(), vec![VOCAB, d]),
            ("pos_emb.weight".to_string(), vec![self.context, d]),
        ];
        for i in 0..self.layers {
            let p = format!("blocks.{i}.");
            t.extend([
                (format!("{p}ln1.weight"), vec![d]),
                (format!("{p}ln1.bias"), vec![d]),
                (format!("{p}attn.qkv.weight"), vec![3 * d, d]),
                (format!("{p}attn.qkv.bias"), vec![3 * d]),
                (format!("{p}attn.proj.weight"), vec![d, d]),
                (format!("{p}attn.proj.bias"), vec![d]),
                (format!("{p}ln2.weight"), vec![d]),
                (format!("{p}ln2.bias"), vec![d]),
                (format!("{p}mlp.fc.weight"), vec![4 * d, d]),
                (format!("{p}mlp.fc.bias"), vec![4 * d]),
                (format!("{p}mlp.proj.weight"), vec![d, 4 * d]),
                (format!("{p}mlp.proj.bias"), vec![d]),
            ]);
        }
        t.push(("ln_f.weight".to_string(), vec![d]));
        t.push(("ln_f.bias".to_string(), vec![d]));
        ModelLayout::new(t)
    }

    /// Parameters, or None where the sizes overflow.
    pub fn checked_params(&self) -> Option<u64> {
        let d = self.d_model as u64;
        let per_block = d
            .checked_mul(d)?
            .checked_mul(12)?
            .checked_add(d.checked_mul(13)?)?;
        (VOCAB as u64 + self.context as u64)
            .checked_mul(d)?
            .checked_add(per_block.checked_mul(self.layers as u64)?)?
            .checked_add(2 * d)
    }

    /// Refuses sizes that make no sense or more than `max_params` parameters.
    pub fn check(&self, max_params: u64) -> Result<(), KernelError> {
        if self.d_model == 0
            || !self.d_model.is_multiple_of(HEAD_DIM)
            || self.layers == 0
            || self.context < 2
        {
            return Err(KernelError::Shape(format!(
                "d_model must be a positive multiple of {HEAD_DIM}, layers at least 1 and context at least 2 (got d_model {}, layers {}, context {})",
                self.d_model, self.layers, self.context
            )));
        }
        match self.checked_params() {
            Some(n) if n <= max_params => Ok(()),
            n => Err(KernelError::Shape(format!(
                "d_model {}, layers {} and context {} make {} parameters; the limit is {max_params}",
                self.d_model,
                self.layers,
                self.context,
                n.map(|n| n.to_string()).unwrap_or_else(|| "more than 2^64".into())
            ))),
        }
    }

    /// Recognises a layout produced by [`layout`](Self::layout).
    pub fn from_layout(layout: &ModelLayout) -> Option<KernelSpec> {
        let t = &layout.tensors;
        if t.len() < 4 || t[0].name != "tok_emb.weight" || t[1].name != "pos_emb.weight" {
            return None;
        }
        let (Some(&d), Some(&context)) = (t[0].shape.get(1), t[1].shape.first()) else {
            return None;
        };
        let spec = KernelSpec {
            d_model: d,
            layers: (t.len() - 4) / 12,
            context,
        };
        (spec.d_model.is_multiple_of(HEAD_DIM) && spec.d_model > 0 && spec.layout() == *layout)
            .then_some(spec)
    }

    /// Deterministic initial weights (GPT-2's scheme): normal(0, 0.02) for
    /// embeddings and projections, the residual projections scaled by
    /// 1/sqrt(2 * layers), zero biases, unit layer-norm gains.
    pub fn init_weights(&self, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut normal = |std: f32| -> f32 {
            // Box-Muller: no extra dependency for one distribution.
            let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
            let u2: f32 = rng.gen();
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        };
        let resid = 0.02 / (2.0 * self.layers as f32).sqrt();
        let mut out = Vec::with_capacity(self.layout().num_params());
        for t in self.layout().tensors {
            let n = t.numel();
            let name = t.name.as_str();
            if name.contains("ln") && name.ends_with(".weight") {
                out.extend(std::iter::repeat_n(1.0, n));
            } else if name.ends_with(".bias") {
                out.extend(std::iter::repeat_n(0.0, n));
            } else {
                let std = if name.ends_with("attn.proj.weight") || name.ends_with("mlp.proj.weight")
                {
                    resid
                } else {
                    0.02
                };
                out.extend((0..n).map(|_| normal(std)));
            }
        }
        out
    }

    /// The network's variables from a flat buffer in layout order.
    pub fn vars(&self, flat: &[f32], dev: &Device) -> Result<KernelVars, KernelError> {
        let layout = self.layout();
        if flat.len() != layout.num_params() {
            return Err(KernelError::Shape(format!(
                "weights have {} values, the network needs {}",
                flat.len(),
                layout.num_params()
            )));
        }
        let mut vars = Vec::with_capacity(layout.tensors.len());
        let mut off = 0;
        for t in &layout.tensors {
            let n = t.numel();
            let x = Tensor::from_slice(&flat[off..off + n], t.shape.as_slice(), dev)?;
            vars.push(Var::from_tensor(&x)?);
            off += n;
        }
        let mut it = vars.into_iter();
        let mut next = || {
            it.next()
                .ok_or_else(|| KernelError::Shape("layout too short".into()))
        };
        let tok_emb = next()?;
        let pos_emb = next()?;
        let mut blocks = Vec::with_capacity(self.layers);
        for _ in 0..self.layers {
            blocks.push(BlockVars {
                ln1_w: next()?,
                ln1_b: next()?,
                qkv_w: next()?,
                qkv_b: next()?,
                proj_w: next()?,
                proj_b: next()?,
                ln2_w: next()?,
                ln2_b: next()?,
                fc_w: next()?,
                fc_b: next()?,
                out_w: next()?,
                out_b: next()?,
            });
        }
        Ok(KernelVars {
            tok_emb,
            pos_emb,
            blocks,
            ln_f_w: next()?,
            ln_f_b: next()?,
        })
    }

    /// Logits `[batch * len, 256]` for token ids `[batch, len]` (u32, len at
    /// most the context): position `t`'s row predicts byte `t + 1`.
    pub fn forward(&self, v: &KernelVars, ids: &Tensor) -> Result<Tensor, KernelError> {
        let (b, t) = ids.dims2()?;
        if t == 0 || t > self.context {
            return Err(KernelError::Input(format!(
                "sequence of {t} bytes; the model takes 1 to {}",
                self.context
            )));
        }
        let d = self.d_model;
        let (h, hd) = (self.heads(), HEAD_DIM);
        let dev = ids.device();
        let tok = v.tok_emb.as_tensor();
        let x = tok.embedding(&ids.flatten_all()?)?.reshape((b, t, d))?;
        let pos = v.pos_emb.as_tensor().narrow(0, 0, t)?;
        let mut x = x.broadcast_add(&pos)?.reshape((b * t, d))?;
        // Additive causal mask: -inf above the diagonal.
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), dev)?;
        let scale = 1.0 / (hd as f64).sqrt();
        for blk in &v.blocks {
            let a = layer_norm(&x, &blk.ln1_w, &blk.ln1_b)?;
            let qkv = linear(&a, &blk.qkv_w, &blk.qkv_b)?
                .reshape((b, t, 3, h, hd))?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()?;
            let q = qkv.get(0)?;
            let k = qkv.get(1)?;
            let vv = qkv.get(2)?;
            let att = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
            let att = candle_nn::ops::softmax(&att, D::Minus1)?;
            let y = att
                .matmul(&vv)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b * t, d))?;
            x = (x + linear(&y, &blk.proj_w, &blk.proj_b)?)?;
            let m = layer_norm(&x, &blk.ln2_w, &blk.ln2_b)?;
            let m = linear(&m, &blk.fc_w, &blk.fc_b)?.gelu()?;
            x = (x + linear(&m, &blk.out_w, &blk.out_b)?)?;
        }
        let x = layer_norm(&x, &v.ln_f_w, &v.ln_f_b)?;
        Ok(x.matmul(&tok.t()?)?)
    }
}

/// `x W^T + b` for `x` of shape `[n, in]`.
fn linear(x: &Tensor, w: &Var, b: &Var) -> candle_core::Result<Tensor> {
    x.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())
}

/// Layer norm over the last dimension, written out of differentiable
/// operations (candle's fused layer norm has no backward pass).
fn layer_norm(x: &Tensor, w: &Var, b: &Var) -> candle_core::Result<Tensor> {
    candle_nn::ops::layer_norm_slow(x, w.as_tensor(), b.as_tensor(), 1e-5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips_and_init_is_deterministic() {
        let spec = KernelSpec {
            d_model: 32,
            layers: 2,
            context: 16,
        };
        let layout = spec.layout();
        assert_eq!(KernelSpec::from_layout(&layout), Some(spec));
        assert_eq!(layout.num_params() as u64, spec.checked_params().unwrap());
        assert_eq!(layout.tensors[2].name, "blocks.0.ln1.weight");
        assert_eq!(layout.tensors[4].name, "blocks.0.attn.qkv.weight");
        assert_eq!(spec.init_weights(7), spec.init_weights(7));
        assert_ne!(spec.init_weights(7), spec.init_weights(8));
        let v = spec.vars(&spec.init_weights(7), &Device::Cpu).unwrap();
        assert_eq!(v.flatten().unwrap(), spec.init_weights(7));
        let ids = Tensor::from_vec(vec![1u32; 2 * 16], (2, 16), &Device::Cpu).unwrap();
        assert_eq!(spec.forward(&v, &ids).unwrap().dims(), &[32, 256]);
        let long = Tensor::from_vec(vec![1u32; 17], (1, 17), &Device::Cpu).unwrap();
        assert!(spec.forward(&v, &long).is_err());
        assert!(spec.check(1_000_000).is_ok());
        assert!(KernelSpec {
            d_model: 20,
            ..spec
        }
        .check(1_000_000)
        .is_err());
    }

    #[test]
    fn attention_is_causal() {
        // Changing a later byte must not change an earlier position's logits.
        let spec = KernelSpec {
            d_model: 32,
            layers: 1,
            context: 8,
        };
        let v = spec.vars(&spec.init_weights(1), &Device::Cpu).unwrap();
        let a = Tensor::from_vec(vec![1u32, 2, 3, 4, 5, 6, 7, 8], (1, 8), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(vec![1u32, 2, 3, 4, 5, 6, 7, 99], (1, 8), &Device::Cpu).unwrap();
        let la = spec.forward(&v, &a).unwrap().narrow(0, 0, 7).unwrap();
        let lb = spec.forward(&v, &b).unwrap().narrow(0, 0, 7).unwrap();
        let diff = (la - lb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }
}
