//! The dtypes a model's tensors may have, as PyTorch has them, and how the
//! hub holds their values.
//!
//! Why one flat f32 buffer still holds every value: every strategy, the
//! streaming fold and the clipping work on it unchanged, whatever the
//! model's dtypes. Floating tensors are aggregated in f32 (F16 and BF16
//! widen exactly; F64 values are rounded to f32). Integer and bool values are
//! held exactly as f32 as long as they are within ±2^24 ([`MAX_EXACT_INT`]):
//! a model whose integer tensor holds more is refused at creation. Each
//! tensor keeps its dtype in the layout, and checkpoints are written in it,
//! so a downloaded version loads with `load_state_dict(strict=True)`.

use safetensors::tensor::Dtype;

/// The largest integer magnitude the hub holds exactly (f32 has a 24-bit
/// significand): 16,777,216.
pub const MAX_EXACT_INT: f32 = 16_777_216.0;

/// A tensor's element type, named as safetensors names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorDtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl TensorDtype {
    pub const ALL: &'static [TensorDtype] = &[
        TensorDtype::F32,
        TensorDtype::F16,
        TensorDtype::BF16,
        TensorDtype::F64,
        TensorDtype::I64,
        TensorDtype::I32,
        TensorDtype::I16,
        TensorDtype::I8,
        TensorDtype::U8,
        TensorDtype::Bool,
    ];

    /// The safetensors (and protocol) name: `F32`, `I64`, `BOOL`...
    pub fn as_str(&self) -> &'static str {
        match self {
            TensorDtype::F32 => "F32",
            TensorDtype::F16 => "F16",
            TensorDtype::BF16 => "BF16",
            TensorDtype::F64 => "F64",
            TensorDtype::I64 => "I64",
            TensorDtype::I32 => "I32",
            TensorDtype::I16 => "I16",
            TensorDtype::I8 => "I8",
            TensorDtype::U8 => "U8",
            TensorDtype::Bool => "BOOL",
        }
    }

    pub fn parse(s: &str) -> Option<TensorDtype> {
        TensorDtype::ALL.iter().copied().find(|d| d.as_str() == s)
    }

    /// None for a safetensors dtype the hub does not take (F8, U16...).
    pub fn from_safetensors(d: Dtype) -> Option<TensorDtype> {
        Some(match d {
            Dtype::F32 => TensorDtype::F32,
            Dtype::F16 => TensorDtype::F16,
            Dtype::BF16 => TensorDtype::BF16,
            Dtype::F64 => TensorDtype::F64,
            Dtype::I64 => TensorDtype::I64,
            Dtype::I32 => TensorDtype::I32,
            Dtype::I16 => TensorDtype::I16,
            Dtype::I8 => TensorDtype::I8,
            Dtype::U8 => TensorDtype::U8,
            Dtype::BOOL => TensorDtype::Bool,
            _ => return None,
        })
    }

    /// Bytes per value.
    pub fn width(&self) -> usize {
        match self {
            TensorDtype::F64 | TensorDtype::I64 => 8,
            TensorDtype::F32 | TensorDtype::I32 => 4,
            TensorDtype::F16 | TensorDtype::BF16 | TensorDtype::I16 => 2,
            TensorDtype::I8 | TensorDtype::U8 | TensorDtype::Bool => 1,
        }
    }

    pub fn is_float(&self) -> bool {
        matches!(
            self,
            TensorDtype::F32 | TensorDtype::F16 | TensorDtype::BF16 | TensorDtype::F64
        )
    }

    /// The values an integer or bool tensor may hold in the hub: its
    /// dtype's range within ±2^24. Unbounded (±f32::MAX) for floats.
    pub fn bounds(&self) -> (f32, f32) {
        match self {
            TensorDtype::Bool => (0.0, 1.0),
            TensorDtype::U8 => (0.0, 255.0),
            TensorDtype::I8 => (-128.0, 127.0),
            TensorDtype::I16 => (-32768.0, 32767.0),
            TensorDtype::I32 | TensorDtype::I64 => (-MAX_EXACT_INT, MAX_EXACT_INT),
            _ => (f32::MIN, f32::MAX),
        }
    }

    /// A value as this integer dtype can hold it: rounded to nearest (half
    /// away from zero) and saturated to [`bounds`](Self::bounds); NaN is 0.
    /// Floats pass through.
    pub fn saturate(&self, v: f32) -> f32 {
        if self.is_float() {
            return v;
        }
        if v.is_nan() {
            return 0.0;
        }
        let (lo, hi) = self.bounds();
        v.round().clamp(lo, hi)
    }

    /// Appends `values` as little-endian values of this dtype (integers
    /// saturated as [`saturate`](Self::saturate) says).
    pub fn write(&self, values: &[f32], out: &mut Vec<u8>) {
        out.reserve(values.len() * self.width());
        match self {
            TensorDtype::F32 => out.extend_from_slice(bytemuck::cast_slice(values)),
            TensorDtype::F16 => {
                for v in values {
                    out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
                }
            }
            TensorDtype::BF16 => {
                for v in values {
                    out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
                }
            }
            TensorDtype::F64 => {
                for v in values {
                    out.extend_from_slice(&(*v as f64).to_le_bytes());
                }
            }
            TensorDtype::I64 => {
                for v in values {
                    out.extend_from_slice(&(self.saturate(*v) as i64).to_le_bytes());
                }
            }
            TensorDtype::I32 => {
                for v in values {
                    out.extend_from_slice(&(self.saturate(*v) as i32).to_le_bytes());
                }
            }
            TensorDtype::I16 => {
                for v in values {
                    out.extend_from_slice(&(self.saturate(*v) as i16).to_le_bytes());
                }
            }
            TensorDtype::I8 => out.extend(values.iter().map(|v| self.saturate(*v) as i8 as u8)),
            TensorDtype::U8 | TensorDtype::Bool => {
                out.extend(values.iter().map(|v| self.saturate(*v) as u8))
            }
        }
    }

    /// The dtype a delta of a tensor of this dtype is sent in: floats in
    /// `float` (the update's compression: F32, F16 or BF16), integers and
    /// bools as I64 (a difference of two U8 or bool values can be negative).
    pub fn delta_dtype(&self, float: TensorDtype) -> TensorDtype {
        if self.is_float() {
            float
        } else {
            TensorDtype::I64
        }
    }
}

impl std::fmt::Display for TensorDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_integers_saturate() {
        for d in TensorDtype::ALL {
            assert_eq!(TensorDtype::parse(d.as_str()), Some(*d));
        }
        assert_eq!(TensorDtype::Bool.as_str(), "BOOL");
        assert_eq!(TensorDtype::U8.saturate(-3.0), 0.0);
        assert_eq!(TensorDtype::U8.saturate(300.0), 255.0);
        assert_eq!(TensorDtype::I8.saturate(-1000.0), -128.0);
        assert_eq!(TensorDtype::I64.saturate(2.5), 3.0);
        assert_eq!(TensorDtype::I64.saturate(-2.5), -3.0);
        assert_eq!(TensorDtype::I64.saturate(f32::MAX), MAX_EXACT_INT);
        assert_eq!(TensorDtype::I32.saturate(f32::NAN), 0.0);
        assert_eq!(TensorDtype::Bool.saturate(7.0), 1.0);
        assert_eq!(TensorDtype::F32.saturate(2.5), 2.5);
        let mut out = Vec::new();
        TensorDtype::I64.write(&[-1.0, 1e30], &mut out);
        assert_eq!(&out[..8], &(-1i64).to_le_bytes());
        assert_eq!(&out[8..], &(MAX_EXACT_INT as i64).to_le_bytes());
        assert_eq!(
            TensorDtype::U8.delta_dtype(TensorDtype::F16),
            TensorDtype::I64
        );
        assert_eq!(
            TensorDtype::F64.delta_dtype(TensorDtype::BF16),
            TensorDtype::BF16
        );
    }
}
