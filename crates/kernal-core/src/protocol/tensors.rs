// Over 600 lines: one format (safetensors) with its encoder, zero-copy visitor and decoders; about 90 lines are unit tests.
//! Models as flat `f32` buffers with a layout, and their safetensors encoding.
//!
//! Every strategy works on one flat buffer per update, so a model is a list of
//! named tensors laid end to end. On the wire and on disk each buffer is a
//! standard safetensors file, loadable by Python's `safetensors` package.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

pub use super::dtypes::TensorDtype;
use super::dtypes::MAX_EXACT_INT;
pub use super::values::Values;
use super::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TensorSpec {
    pub name: String,
    /// Exact, 0-d (`[]`, one value) included.
    pub shape: Vec<usize>,
    /// The model tensor's dtype as safetensors names it (F32, F16, BF16,
    /// F64, I64, I32, I16, I8, U8, BOOL): checkpoints are written in it.
    pub dtype: String,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The dtype (F32 for a name this hub does not know, which only a
    /// hand-edited database could hold).
    pub fn tensor_dtype(&self) -> TensorDtype {
        TensorDtype::parse(&self.dtype).unwrap_or(TensorDtype::F32)
    }

    /// Whether the tensor holds integers or bools (folded by its rule, not
    /// by the strategy).
    pub fn is_integer(&self) -> bool {
        !self.tensor_dtype().is_float()
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

    /// A layout whose tensors have the given dtypes.
    pub fn with_dtypes(tensors: Vec<(String, Vec<usize>, TensorDtype)>) -> Self {
        ModelLayout {
            tensors: tensors
                .into_iter()
                .map(|(name, shape, d)| TensorSpec {
                    name,
                    shape,
                    dtype: d.as_str().into(),
                })
                .collect(),
        }
    }

    /// Whether any tensor holds integers or bools.
    pub fn has_integers(&self) -> bool {
        self.tensors.iter().any(|t| t.is_integer())
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

    /// Encodes a flat buffer as safetensors, each tensor in the model's own
    /// dtype (checkpoints, weights to trainers), with optional string
    /// metadata. Written by hand (the format is a length, a JSON header and
    /// raw little-endian bytes) so the tensor bytes are copied exactly once.
    pub fn encode(
        &self,
        flat: &[f32],
        metadata: Option<&HashMap<String, String>>,
    ) -> Result<Vec<u8>, TensorError> {
        self.encode_with(flat, metadata, |t| t.tensor_dtype())
    }

    /// Encodes a delta: floating tensors as `dtype` (F32, or F16/BF16 for
    /// the optional update compression), integer and bool tensors as I64
    /// (see [`TensorDtype::delta_dtype`]).
    pub fn encode_as(
        &self,
        flat: &[f32],
        metadata: Option<&HashMap<String, String>>,
        dtype: Dtype,
    ) -> Result<Vec<u8>, TensorError> {
        let float = match TensorDtype::from_safetensors(dtype) {
            Some(d) if d.is_float() => d,
            _ => {
                return Err(TensorError::new(
                    ErrorCode::TensorMismatch,
                    format!("cannot encode a delta as dtype {dtype:?}"),
                ))
            }
        };
        self.encode_with(flat, metadata, |t| t.tensor_dtype().delta_dtype(float))
    }

    fn encode_with(
        &self,
        flat: &[f32],
        metadata: Option<&HashMap<String, String>>,
        dtype_of: impl Fn(&TensorSpec) -> TensorDtype,
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
            let dt = dtype_of(t);
            let n = t.numel() * dt.width();
            if header.len() > 1 {
                header.push(',');
            }
            header.push_str(&json(&t.name));
            header.push(':');
            header.push_str(&json(&Entry {
                dtype: dt.as_str(),
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
        let mut start = 0;
        for t in &self.tensors {
            let n = t.numel();
            dtype_of(t).write(&flat[start..start + n], &mut out);
            start += n;
        }
        Ok(out)
    }

    /// Checks a safetensors buffer against the layout and calls `f(spec,
    /// offset, values)` for each tensor in layout order, where `offset` is
    /// the tensor's start in the flat buffer. Refuses any mismatch of names,
    /// shapes or dtypes, any non-finite value and, in an integer or bool
    /// tensor, any value that is not an integer within ±2^24. Never copies
    /// the bytes.
    pub fn visit(
        &self,
        bytes: &[u8],
        f: impl FnMut(&TensorSpec, usize, Values<'_>),
    ) -> Result<(), TensorError> {
        self.visit_inner(bytes, true, f)
    }

    fn visit_inner(
        &self,
        bytes: &[u8],
        check_finite: bool,
        mut f: impl FnMut(&TensorSpec, usize, Values<'_>),
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
                    shape_mismatch(&spec.name, view.shape(), &spec.shape),
                ));
            }
            let model = spec.tensor_dtype();
            let values = match TensorDtype::from_safetensors(view.dtype()) {
                Some(d) if d.is_float() || !model.is_float() => Values::new(d, view.data()),
                _ => {
                    return Err(TensorError::new(
                        ErrorCode::TensorMismatch,
                        format!(
                        "tensor `{}` has dtype {:?}; the model's tensor is {model}, whose values \
                             travel as {}",
                        spec.name,
                        view.dtype(),
                        if model.is_float() {
                            "F32, F16, BF16 or F64"
                        } else {
                            "integers (I64, I32, I16, I8, U8, BOOL) or integral floats"
                        }
                    ),
                    ))
                }
            };
            if !model.is_float() {
                if let Some((i, v)) = values.first_non_integer() {
                    return Err(TensorError::new(
                        ErrorCode::NonIntegerDelta,
                        format!(
                            "tensor `{}` is {model}: its values must be integers within ±2^24 \
                             ({MAX_EXACT_INT}), but index {i} holds {v}",
                            spec.name
                        ),
                    ));
                }
            } else if check_finite {
                if let Some((i, v)) = values.first_non_finite() {
                    return Err(TensorError::new(
                        ErrorCode::NonFinite,
                        format!(
                            "tensor `{}` holds a non-finite value ({v}{}) at index {i}",
                            spec.name,
                            if values.dtype() == TensorDtype::F64 {
                                " as f32: F64 values beyond the f32 range are refused"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
            }
            f(spec, offset, values);
            offset += spec.numel();
        }
        Ok(())
    }

    /// Checks a buffer (names, shapes, dtypes, finite values) and returns the
    /// sum of squares of its floating tensors' values (integer buffers are
    /// counts, folded by their own rule, not clipped), in one pass: a sum of
    /// squares in f64 cannot overflow for finite f32 values, so it is
    /// non-finite exactly when a value is, and only then is the buffer
    /// scanned for which.
    pub fn check_sum_squares(&self, bytes: &[u8]) -> Result<f64, TensorError> {
        let mut s = 0.0f64;
        self.visit_inner(bytes, false, |t, _, v| {
            if !t.is_integer() {
                s += v.sum_squares()
            }
        })?;
        if !s.is_finite() {
            self.validate(bytes)?;
        }
        Ok(s)
    }

    /// The values of the integer and bool tensors, end to end in layout
    /// order (None when the model has none): what their rules fold.
    pub fn integer_values(&self, bytes: &[u8]) -> Result<Option<Vec<f32>>, TensorError> {
        if !self.has_integers() {
            return Ok(None);
        }
        let mut out = Vec::new();
        self.visit_inner(bytes, false, |t, _, v| {
            if t.is_integer() {
                v.for_each(|_, x| out.push(x))
            }
        })?;
        Ok(Some(out))
    }

    /// Checks a buffer without decoding it.
    pub fn validate(&self, bytes: &[u8]) -> Result<(), TensorError> {
        self.visit(bytes, |_, _, _| {})
    }

    /// Decodes a safetensors buffer into a flat `f32` buffer in layout order,
    /// refusing anything that does not match the layout exactly and any
    /// non-finite value.
    pub fn decode(&self, bytes: &[u8]) -> Result<Vec<f32>, TensorError> {
        let mut flat = vec![0.0f32; self.num_params()];
        self.visit(bytes, |_, off, v| v.write_into(&mut flat[off..]))?;
        Ok(flat)
    }

    /// `acc += factor * buffer` for the floating tensors, straight from the
    /// encoded bytes (integer tensors are folded by their rules).
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
        self.visit(bytes, |t, off, v| {
            if !t.is_integer() {
                v.axpy_into(&mut acc[off..], factor)
            }
        })
    }

    /// Sum of squares of the floating tensors' values (for clipping), from
    /// the encoded bytes.
    pub fn sum_squares(&self, bytes: &[u8]) -> Result<f64, TensorError> {
        let mut s = 0.0f64;
        self.visit(bytes, |t, _, v| {
            if !t.is_integer() {
                s += v.sum_squares()
            }
        })?;
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
            let Some(dtype) = TensorDtype::from_safetensors(v.dtype()) else {
                return Err(TensorError::new(
                    ErrorCode::TensorMismatch,
                    format!(
                        "tensor `{n}` has dtype {:?}; a model's tensors may be F32, F16, BF16, \
                         F64, I64, I32, I16, I8, U8 or BOOL",
                        v.dtype()
                    ),
                ));
            };
            if !dtype.is_float() {
                if let Some((i, x)) = Values::new(dtype, v.data()).first_non_integer() {
                    return Err(TensorError::new(
                        ErrorCode::IntegerOutOfRange,
                        format!(
                            "tensor `{n}` ({dtype}) holds {x} at index {i}: the hub holds integer \
                             values exactly up to ±2^24 ({MAX_EXACT_INT}) and refuses larger ones"
                        ),
                    ));
                }
            }
            specs.push((n.clone(), v.shape().to_vec(), dtype));
        }
        let count = specs.iter().try_fold(0u64, |acc, (_, shape, _)| {
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
        let layout = ModelLayout::with_dtypes(specs);
        let flat = layout.decode(bytes)?;
        Ok((layout, flat))
    }
}

/// A shape mismatch, said plainly when it is a scalar against a
/// one-element vector (PyTorch's `num_batches_tracked` is 0-d).
fn shape_mismatch(name: &str, got: &[usize], want: &[usize]) -> String {
    let hint = match (got, want) {
        ([], [1]) => " (a 0-d scalar sent for a one-element vector)",
        ([1], []) => " (a one-element vector sent for a 0-d scalar: keep it 0-d)",
        _ => "",
    };
    format!("tensor `{name}` has shape {got:?}, the model needs {want:?}{hint}")
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
