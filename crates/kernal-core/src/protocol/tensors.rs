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

/// How [`ModelLayout::visit_windows`] walks a buffer's values: at most
/// `bytes` of a tensor at a time, each window handed to `done` once used.
pub struct Window<'a> {
    pub bytes: usize,
    pub done: Option<&'a mut WindowDone<'a>>,
}

/// What is told of each window once it was used.
pub type WindowDone<'a> = dyn FnMut(&[u8]) + 'a;

impl Window<'_> {
    /// Each tensor whole, nothing told.
    pub const WHOLE: Window<'static> = Window {
        bytes: usize::MAX,
        done: None,
    };
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

    /// What [`encode`](Self::encode) writes before the tensors' bytes (the
    /// length, the header and its padding), when every tensor is F32 (None
    /// otherwise): on a little-endian machine the bytes that follow are the
    /// flat buffer's own memory, so a version can be sent and stored as this
    /// header plus a view of its weights, never copied into an encoding.
    pub fn encode_f32_header(
        &self,
        len: usize,
        metadata: Option<&HashMap<String, String>>,
    ) -> Option<Vec<u8>> {
        let all_f32 = self
            .tensors
            .iter()
            .all(|t| t.tensor_dtype() == TensorDtype::F32);
        if !all_f32 || !cfg!(target_endian = "little") || len != self.num_params() {
            return None;
        }
        self.encode_inner(len, &[], metadata, |t| t.tensor_dtype(), true)
            .ok()
    }

    fn encode_with(
        &self,
        flat: &[f32],
        metadata: Option<&HashMap<String, String>>,
        dtype_of: impl Fn(&TensorSpec) -> TensorDtype,
    ) -> Result<Vec<u8>, TensorError> {
        self.encode_inner(flat.len(), flat, metadata, dtype_of, false)
    }

    fn encode_inner(
        &self,
        len: usize,
        flat: &[f32],
        metadata: Option<&HashMap<String, String>>,
        dtype_of: impl Fn(&TensorSpec) -> TensorDtype,
        header_only: bool,
    ) -> Result<Vec<u8>, TensorError> {
        if len != self.num_params() {
            return Err(TensorError::new(
                ErrorCode::TensorMismatch,
                format!(
                    "buffer has {} values, layout needs {}",
                    len,
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
        if header_only {
            return Ok(out);
        }
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
        f: impl FnMut(&TensorSpec, usize, Values<'_>),
    ) -> Result<(), TensorError> {
        self.visit_windows(bytes, check_finite, Window::WHOLE, f)
    }

    /// [`visit`](Self::visit) a window of at most `window.bytes` at a time
    /// (`f` gets each window's values with its start in the flat buffer),
    /// handing each window to `window.done` once it was used: a 400 MB
    /// update read from a file mapping is scanned without all of it
    /// becoming resident at once.
    pub fn visit_windows(
        &self,
        bytes: &[u8],
        check_finite: bool,
        mut window: Window<'_>,
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
            let dtype = match TensorDtype::from_safetensors(view.dtype()) {
                Some(d) if d.is_float() || !model.is_float() => d,
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
            let width = dtype.width().max(1);
            let step = (window.bytes / width).max(1) * width;
            let data = view.data();
            let mut start = 0usize;
            loop {
                let end = data.len().min(start.saturating_add(step));
                let values = Values::new(dtype, &data[start..end]);
                Self::check_values(spec, model, values, start / width, check_finite)?;
                f(spec, offset + start / width, values);
                if let Some(done) = window.done.as_mut() {
                    done(&data[start..end]);
                }
                if end == data.len() {
                    break;
                }
                start = end;
            }
            offset += spec.numel();
        }
        Ok(())
    }

    /// Refuses a window of a tensor's values (starting at index `first`)
    /// that its dtype cannot hold.
    fn check_values(
        spec: &TensorSpec,
        model: TensorDtype,
        values: Values<'_>,
        first: usize,
        check_finite: bool,
    ) -> Result<(), TensorError> {
        {
            if !model.is_float() {
                if let Some((i, v)) = values.first_non_integer() {
                    let i = first + i;
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
                    let i = first + i;
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
        self.check_sum_squares_windowed(bytes, Window::WHOLE)
    }

    /// [`check_sum_squares`](Self::check_sum_squares) a window at a time.
    pub fn check_sum_squares_windowed(
        &self,
        bytes: &[u8],
        window: Window<'_>,
    ) -> Result<f64, TensorError> {
        let mut s = 0.0f64;
        self.visit_windows(bytes, false, window, |t, _, v| {
            if !t.is_integer() {
                s += v.sum_squares()
            }
        })?;
        if !s.is_finite() {
            self.validate(bytes)?;
        }
        Ok(s)
    }

    /// [`accumulate`](Self::accumulate) a window at a time.
    pub fn accumulate_windowed(
        &self,
        bytes: &[u8],
        acc: &mut [f32],
        factor: f32,
        window: Window<'_>,
    ) -> Result<(), TensorError> {
        if acc.len() != self.num_params() {
            return Err(TensorError::new(
                ErrorCode::TensorMismatch,
                "accumulator size differs from the layout",
            ));
        }
        self.visit_windows(bytes, true, window, |t, off, v| {
            if !t.is_integer() {
                v.axpy_into(&mut acc[off..], factor)
            }
        })
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
        self.accumulate_windowed(bytes, acc, factor, Window::WHOLE)
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
mod tests;
