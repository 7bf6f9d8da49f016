// Over 600 lines: one format (safetensors) with its encoder, zero-copy visitor and decoders; about 90 lines are unit tests.
//! Models as flat `f32` buffers with a layout, and their safetensors encoding.
//!
//! Every strategy works on one flat buffer per update, so a model is a list of
//! named tensors laid end to end. On the wire and on disk each buffer is a
//! standard safetensors file, loadable by Python's `safetensors` package.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Always "F32" for model weights; updates may also be "F16" or "BF16".
    pub dtype: String,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Ordered tensors of a model; the flat buffer holds them end to end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelLayout {
    pub tensors: Vec<TensorSpec>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct TensorError {
    pub code: ErrorCode,
    pub message: String,
}

impl TensorError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        TensorError {
            code,
            message: message.into(),
        }
    }
}

impl ModelLayout {
    pub fn new(tensors: Vec<(String, Vec<usize>)>) -> Self {
        ModelLayout {
            tensors: tensors
                .into_iter()
                .map(|(name, shape)| TensorSpec {
                    name,
                    shape,
                    dtype: "F32".into(),
                })
                .collect(),
        }
    }

    pub fn num_params(&self) -> usize {
        self.tensors.iter().map(|t| t.numel()).sum()
    }

    /// Start offset of each tensor in the flat buffer.
    pub fn offsets(&self) -> Vec<usize> {
        let mut off = 0;
        self.tensors
            .iter()
            .map(|t| {
                let o = off;
                off += t.numel();
                o
            })
            .collect()
    }

    /// Encodes a flat buffer as safetensors, with optional string metadata.
    /// Written by hand (the format is a length, a JSON header and raw
    /// little-endian bytes) so the tensor bytes are copied exactly once.
    pub fn encode(
        &self,
        flat: &[f32],
        metadata: Option<&HashMap<String, String>>,
    ) -> Result<Vec<u8>, TensorError> {
        self.encode_as(flat, metadata, Dtype::F32)
    }

    /// Like [`encode`](Self::encode) but storing F16 or BF16 values, the
    /// optional update compression.
    pub fn encode_as(
        &self,
        flat: &[f32],
        metadata: Option<&HashMap<String, String>>,
        dtype: Dtype,
    ) -> Result<Vec<u8>, TensorError> {
        if flat.len() != self.num_params() {
            return Err(TensorError::new(
                ErrorCode::TensorMismatch,
                format!(
                    "buffer has {} values, layout needs {}",
                    flat.len(),
                    self.num_params()
                ),
            ));
        }
        let (width, dname) = match dtype {
            Dtype::F32 => (4, "F32"),
            Dtype::F16 => (2, "F16"),
            Dtype::BF16 => (2, "BF16"),
            other => {
                return Err(TensorError::new(
                    ErrorCode::TensorMismatch,
                    format!("cannot encode dtype {other:?}"),
                ))
            }
        };
        // The header as the reference writer lays it out (metadata first,
        // then each tensor in data order with dtype, shape, data_offsets),
        // so a file kernal writes is byte for byte the one Python's
        // safetensors writes for the same tensors (tests/golden.rs).
        #[derive(Serialize)]
        struct Entry<'a> {
            dtype: &'a str,
            shape: &'a [usize],
            data_offsets: [usize; 2],
        }
        // Strings, string maps and this struct always serialise.
        fn json<T: Serialize + ?Sized>(v: &T) -> String {
            serde_json::to_string(v).unwrap_or_default()
        }
        let mut header = String::from("{");
        if let Some(meta) = metadata {
            let sorted: std::collections::BTreeMap<_, _> = meta.iter().collect();
            header.push_str("\"__metadata__\":");
            header.push_str(&json(&sorted));
        }
        let mut off = 0usize;
        for t in &self.tensors {
            let n = t.numel() * width;
            if header.len() > 1 {
                header.push(',');
            }
            header.push_str(&json(&t.name));
            header.push(':');
            header.push_str(&json(&Entry {
                dtype: dname,
                shape: &t.shape,
                data_offsets: [off, off + n],
            }));
            off += n;
        }
        header.push('}');
        let mut hjson = header.into_bytes();
        // The data section starts 8-byte aligned, as the reference writer does.
        while !(8 + hjson.len()).is_multiple_of(8) {
            hjson.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + hjson.len() + off);
        out.extend_from_slice(&(hjson.len() as u64).to_le_bytes());
        out.extend_from_slice(&hjson);
        match dtype {
            Dtype::F32 => out.extend_from_slice(bytemuck::cast_slice(flat)),
            Dtype::F16 => {
                for v in flat {
                    out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
                }
            }
            _ => {
                for v in flat {
                    out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
                }
            }
        }
        Ok(out)
    }

    /// Checks a safetensors buffer against the layout and calls `f(offset,
    /// values)` for each tensor in layout order, where `offset` is the
    /// tensor's start in the flat buffer. Refuses any mismatch of names,
    /// shapes or dtypes and any non-finite value. Never copies the bytes.
    pub fn visit(&self, bytes: &[u8], f: impl FnMut(usize, Values<'_>)) -> Result<(), TensorError> {
        self.visit_inner(bytes, true, f)
    }

    fn visit_inner(
        &self,
        bytes: &[u8],
        check_finite: bool,
        mut f: impl FnMut(usize, Values<'_>),
    ) -> Result<(), TensorError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            TensorError::new(
                ErrorCode::BadSafetensors,
                format!("not a valid safetensors buffer: {e}"),
            )
        })?;
        if st.len() != self.tensors.len() {
            for n in st.names() {
                if !self.tensors.iter().any(|t| t.name == *n) {
                    return Err(TensorError::new(
                        ErrorCode::TensorMismatch,
                        format!(
                            "unexpected tensor `{n}`; the model has {}",
                            self.tensor_names()
                        ),
                    ));
                }
            }
        }
        let mut offset = 0;
        for spec in &self.tensors {
            let view = st.tensor(&spec.name).map_err(|_| {
                TensorError::new(
                    ErrorCode::TensorMismatch,
                    format!("missing tensor `{}` (shape {:?})", spec.name, spec.shape),
                )
            })?;
            if view.shape() != spec.shape.as_slice() {
                return Err(TensorError::new(
                    ErrorCode::TensorMismatch,
                    format!(
                        "tensor `{}` has shape {:?}, the model needs {:?}",
                        spec.name,
                        view.shape(),
                        spec.shape
                    ),
                ));
            }
            let values = match view.dtype() {
                Dtype::F32 => Values::F32(view.data()),
                Dtype::F16 => Values::F16(view.data()),
                Dtype::BF16 => Values::BF16(view.data()),
                other => {
                    return Err(TensorError::new(
                        ErrorCode::TensorMismatch,
                        format!(
                            "tensor `{}` has dtype {other:?}; accepted: F32, F16, BF16",
                            spec.name
                        ),
                    ))
                }
            };
            let bad = if check_finite {
                values.first_non_finite()
            } else {
                None
            };
            if let Some((i, v)) = bad {
                return Err(TensorError::new(
                    ErrorCode::NonFinite,
                    format!(
                        "tensor `{}` holds a non-finite value ({v}) at index {i}",
                        spec.name
                    ),
                ));
            }
            f(offset, values);
            offset += spec.numel();
        }
        Ok(())
    }

    /// Checks a buffer (names, shapes, dtypes, finite values) and returns the
    /// sum of squares of its values, in one pass: a sum of squares in f64
    /// cannot overflow for finite f32 values, so it is non-finite exactly
    /// when a value is, and only then is the buffer scanned for which.
    pub fn check_sum_squares(&self, bytes: &[u8]) -> Result<f64, TensorError> {
        let mut s = 0.0f64;
        self.visit_inner(bytes, false, |_, v| s += v.sum_squares())?;
        if !s.is_finite() {
            self.validate(bytes)?;
        }
        Ok(s)
    }

    /// Checks a buffer without decoding it.
    pub fn validate(&self, bytes: &[u8]) -> Result<(), TensorError> {
        self.visit(bytes, |_, _| {})
    }

    /// Decodes a safetensors buffer into a flat `f32` buffer in layout order,
    /// refusing anything that does not match the layout exactly and any
    /// non-finite value.
    pub fn decode(&self, bytes: &[u8]) -> Result<Vec<f32>, TensorError> {
        let mut flat = vec![0.0f32; self.num_params()];
        self.visit(bytes, |off, v| v.write_into(&mut flat[off..]))?;
        Ok(flat)
    }

    /// `acc += factor * buffer`, straight from the encoded bytes.
    pub fn accumulate(
        &self,
        bytes: &[u8],
        acc: &mut [f32],
        factor: f32,
    ) -> Result<(), TensorError> {
        if acc.len() != self.num_params() {
            return Err(TensorError::new(
                ErrorCode::TensorMismatch,
                "accumulator size differs from the layout",
            ));
        }
        self.visit(bytes, |off, v| v.axpy_into(&mut acc[off..], factor))
    }

    /// Sum of squares of every value (for clipping), from the encoded bytes.
    pub fn sum_squares(&self, bytes: &[u8]) -> Result<f64, TensorError> {
        let mut s = 0.0f64;
        self.visit(bytes, |_, v| s += v.sum_squares())?;
        Ok(s)
    }

    fn tensor_names(&self) -> String {
        self.tensors
            .iter()
            .map(|t| format!("`{}` {:?}", t.name, t.shape))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Infers a layout from a safetensors buffer (admin model creation).
    /// Tensors are ordered by name so the layout is deterministic.
    pub fn from_safetensors(bytes: &[u8]) -> Result<(ModelLayout, Vec<f32>), TensorError> {
        Self::from_safetensors_limited(bytes, u64::MAX)
    }

    /// [`from_safetensors`](Self::from_safetensors), refusing more than
    /// `max_params` parameters (counted without overflow) before decoding.
    pub fn from_safetensors_limited(
        bytes: &[u8],
        max_params: u64,
    ) -> Result<(ModelLayout, Vec<f32>), TensorError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            TensorError::new(
                ErrorCode::BadSafetensors,
                format!("not a valid safetensors buffer: {e}"),
            )
        })?;
        let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        if names.is_empty() {
            return Err(TensorError::new(
                ErrorCode::TensorMismatch,
                "the buffer holds no tensor",
            ));
        }
        let mut specs = Vec::new();
        for n in &names {
            let v = st
                .tensor(n)
                .map_err(|e| TensorError::new(ErrorCode::BadSafetensors, e.to_string()))?;
            if v.dtype() != Dtype::F32 {
                return Err(TensorError::new(
                    ErrorCode::TensorMismatch,
                    format!(
                        "tensor `{n}` has dtype {:?}; model weights are F32",
                        v.dtype()
                    ),
                ));
            }
            specs.push((n.clone(), v.shape().to_vec()));
        }
        let count = specs.iter().try_fold(0u64, |acc, (_, shape)| {
            shape
                .iter()
                .try_fold(1u64, |n, d| n.checked_mul(*d as u64))
                .and_then(|n| acc.checked_add(n))
        });
        match count {
            Some(n) if n <= max_params => {}
            n => {
                return Err(TensorError::new(
                    ErrorCode::ModelTooLarge,
                    format!(
                        "the weights hold {} parameters; the limit (hub.max_model_params) is {max_params}",
                        n.map(|n| n.to_string()).unwrap_or_else(|| "more than 2^64".into())
                    ),
                ))
            }
        }
        let layout = ModelLayout::new(specs);
        let flat = layout.decode(bytes)?;
        Ok((layout, flat))
    }
}

/// The raw little-endian values of one tensor.
#[derive(Debug, Clone, Copy)]
pub enum Values<'a> {
    F32(&'a [u8]),
    F16(&'a [u8]),
    BF16(&'a [u8]),
}

impl Values<'_> {
    fn first_non_finite(&self) -> Option<(usize, f32)> {
        // Branch-free scan in blocks (an exponent of all ones means NaN or
        // infinity), so the common all-finite case vectorises; the exact
        // index is only looked for when a block has one.
        let (width, exp_mask): (usize, u32) = match self {
            Values::F32(_) => (4, 0x7f80_0000),
            Values::F16(_) => (2, 0x7c00),
            Values::BF16(_) => (2, 0x7f80),
        };
        let d = match self {
            Values::F32(d) | Values::F16(d) | Values::BF16(d) => *d,
        };
        const BLOCK: usize = 1024;
        for (bi, block) in d.chunks(BLOCK * width).enumerate() {
            let bad = if width == 4 {
                block.chunks_exact(4).fold(false, |acc, c| {
                    acc | (u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & exp_mask == exp_mask)
                })
            } else {
                block.chunks_exact(2).fold(false, |acc, c| {
                    acc | ((u16::from_le_bytes([c[0], c[1]]) as u32) & exp_mask == exp_mask)
                })
            };
            if bad {
                let mut v = [0f32; 1];
                for i in 0..block.len() / width {
                    let idx = bi * BLOCK + i;
                    self.slice_value(idx, &mut v);
                    if !v[0].is_finite() {
                        return Some((idx, v[0]));
                    }
                }
            }
        }
        None
    }

    /// Calls `f(index, value)` for every value, widened to f32. Generic, so
    /// each caller's loop is compiled per dtype and vectorises.
    #[inline]
    fn for_each(&self, mut f: impl FnMut(usize, f32)) {
        match self {
            Values::F32(d) => d
                .chunks_exact(4)
                .enumerate()
                .for_each(|(i, c)| f(i, f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            Values::F16(d) => {
                // Widened a block at a time with the slice conversion (F16C
                // instructions where the CPU has them): per-value `to_f32`
                // checks for them on every call and does not vectorise.
                use half::slice::HalfFloatSliceExt;
                const N: usize = 1024;
                let mut h = [half::f16::ZERO; N];
                let mut w = [0f32; N];
                for (b, block) in d.chunks(2 * N).enumerate() {
                    let n = block.len() / 2;
                    for (x, c) in h.iter_mut().zip(block.chunks_exact(2)) {
                        *x = half::f16::from_le_bytes([c[0], c[1]]);
                    }
                    h[..n].convert_to_f32_slice(&mut w[..n]);
                    for (j, v) in w[..n].iter().enumerate() {
                        f(b * N + j, *v);
                    }
                }
            }
            Values::BF16(d) => d
                .chunks_exact(2)
                .enumerate()
                .for_each(|(i, c)| f(i, half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        }
    }

    fn write_into(&self, out: &mut [f32]) {
        self.for_each(|i, v| out[i] = v);
    }

    fn axpy_into(&self, out: &mut [f32], a: f32) {
        self.for_each(|i, v| out[i] += a * v);
    }

    /// Sum of squares in f64, in eight independent lanes so it vectorises
    /// (a single running sum cannot be reordered by the compiler).
    fn sum_squares(&self) -> f64 {
        let mut lanes = [0f64; 8];
        match self {
            Values::F32(d) => {
                let mut chunks = d.chunks_exact(32);
                for c in &mut chunks {
                    for (k, lane) in lanes.iter_mut().enumerate() {
                        let v = f32::from_le_bytes([
                            c[4 * k],
                            c[4 * k + 1],
                            c[4 * k + 2],
                            c[4 * k + 3],
                        ]) as f64;
                        *lane += v * v;
                    }
                }
                for c in chunks.remainder().chunks_exact(4) {
                    let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64;
                    lanes[0] += v * v;
                }
            }
            _ => self.for_each(|i, v| lanes[i & 7] += (v as f64) * (v as f64)),
        }
        lanes.iter().sum()
    }

    fn slice_value(&self, i: usize, out: &mut [f32; 1]) {
        out[0] = match self {
            Values::F32(d) => {
                f32::from_le_bytes([d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]])
            }
            Values::F16(d) => half::f16::from_le_bytes([d[2 * i], d[2 * i + 1]]).to_f32(),
            Values::BF16(d) => half::bf16::from_le_bytes([d[2 * i], d[2 * i + 1]]).to_f32(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulate_from_bytes() {
        let l = layout();
        let a: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let bytes = l.encode(&a, None).unwrap();
        let mut acc = vec![1.0f32; 8];
        l.accumulate(&bytes, &mut acc, 0.5).unwrap();
        assert_eq!(acc, a.iter().map(|v| 1.0 + 0.5 * v).collect::<Vec<_>>());
        assert_eq!(
            l.sum_squares(&bytes).unwrap(),
            a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>()
        );
        let h = l.encode_as(&a, None, Dtype::F16).unwrap();
        assert_eq!(
            l.sum_squares(&h).unwrap(),
            a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>()
        );
        // One pass gives the norm and refuses what validation refuses.
        let long = ModelLayout::new(vec![("w".into(), vec![1001])]);
        let vals: Vec<f32> = (0..1001).map(|i| (i % 13) as f32 - 6.0).collect();
        let want: f64 = vals.iter().map(|v| (*v as f64).powi(2)).sum();
        let enc = long.encode(&vals, None).unwrap();
        assert_eq!(long.check_sum_squares(&enc).unwrap(), want);
        let mut huge = vals.clone();
        huge[1000] = f32::MAX;
        let enc = long.encode(&huge, None).unwrap();
        assert!(long.check_sum_squares(&enc).unwrap().is_finite());
        huge[999] = f32::INFINITY;
        let enc = long.encode(&huge, None).unwrap();
        let e = long.check_sum_squares(&enc).unwrap_err();
        assert_eq!(e.code, ErrorCode::NonFinite);
        assert!(e.message.contains("index 999"), "{}", e.message);
    }

    fn layout() -> ModelLayout {
        ModelLayout::new(vec![("w".into(), vec![2, 3]), ("b".into(), vec![2])])
    }

    #[test]
    fn round_trip_and_reference_reader() {
        let l = layout();
        let flat: Vec<f32> = (0..8).map(|i| i as f32 * 0.5).collect();
        let mut meta = HashMap::new();
        meta.insert("version".to_string(), "3".to_string());
        let bytes = l.encode(&flat, Some(&meta)).unwrap();
        // The reference parser accepts what we wrote.
        let (n, m) = SafeTensors::read_metadata(&bytes).unwrap();
        assert!(n % 8 == 0 || (8 + n) % 8 == 0);
        assert_eq!(m.metadata().as_ref().unwrap()["version"], "3");
        assert_eq!(l.decode(&bytes).unwrap(), flat);
    }

    #[test]
    fn half_precision_round_trip() {
        let l = layout();
        let flat: Vec<f32> = (0..8).map(|i| i as f32 * 0.25).collect();
        let bytes = l.encode_as(&flat, None, Dtype::F16).unwrap();
        assert_eq!(l.decode(&bytes).unwrap(), flat);
        let bytes = l.encode_as(&flat, None, Dtype::BF16).unwrap();
        assert_eq!(l.decode(&bytes).unwrap(), flat);
    }

    #[test]
    fn refuses_mismatch_and_nan() {
        let l = layout();
        let other = ModelLayout::new(vec![("w".into(), vec![3, 2]), ("b".into(), vec![2])]);
        let bytes = other.encode(&[0.0; 8], None).unwrap();
        assert_eq!(
            l.decode(&bytes).unwrap_err().code,
            ErrorCode::TensorMismatch
        );
        let mut flat = vec![0.0f32; 8];
        flat[7] = f32::NAN;
        let bytes = l.encode(&flat, None).unwrap();
        assert_eq!(l.decode(&bytes).unwrap_err().code, ErrorCode::NonFinite);
        assert_eq!(
            l.decode(b"garbage").unwrap_err().code,
            ErrorCode::BadSafetensors
        );
        let extra = ModelLayout::new(vec![
            ("w".into(), vec![2, 3]),
            ("b".into(), vec![2]),
            ("z".into(), vec![1]),
        ]);
        let bytes = extra.encode(&[0.0; 9], None).unwrap();
        assert_eq!(
            l.decode(&bytes).unwrap_err().code,
            ErrorCode::TensorMismatch
        );
    }
}
