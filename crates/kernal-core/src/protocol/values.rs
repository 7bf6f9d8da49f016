//! One tensor's raw little-endian values, read in place (never copied):
//! widened to f32 for the fold, scanned for non-finite and non-integral
//! values. F32, F16 and BF16 (every update of a float model) have loops of
//! their own that vectorise; the other dtypes share one generic path.

use super::dtypes::{TensorDtype, MAX_EXACT_INT};

/// The raw little-endian values of one tensor.
#[derive(Debug, Clone, Copy)]
pub enum Values<'a> {
    F32(&'a [u8]),
    F16(&'a [u8]),
    BF16(&'a [u8]),
    /// F64 and the integer and bool dtypes.
    Other(TensorDtype, &'a [u8]),
}

impl<'a> Values<'a> {
    pub fn new(dtype: TensorDtype, data: &'a [u8]) -> Values<'a> {
        match dtype {
            TensorDtype::F32 => Values::F32(data),
            TensorDtype::F16 => Values::F16(data),
            TensorDtype::BF16 => Values::BF16(data),
            other => Values::Other(other, data),
        }
    }

    pub fn dtype(&self) -> TensorDtype {
        match self {
            Values::F32(_) => TensorDtype::F32,
            Values::F16(_) => TensorDtype::F16,
            Values::BF16(_) => TensorDtype::BF16,
            Values::Other(d, _) => *d,
        }
    }

    fn data(&self) -> &'a [u8] {
        match self {
            Values::F32(d) | Values::F16(d) | Values::BF16(d) | Values::Other(_, d) => d,
        }
    }

    /// The first value that is NaN or infinite once widened (or, for F64,
    /// rounded) to f32: an F64 value beyond the f32 range counts, since the
    /// hub would hold it as infinity. Integers are always finite.
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        // Branch-free scan in blocks (an exponent of all ones means NaN or
        // infinity), so the common all-finite case vectorises; the exact
        // index is only looked for when a block has one.
        let (width, exp_mask): (usize, u32) = match self {
            Values::F32(_) => (4, 0x7f80_0000),
            Values::F16(_) => (2, 0x7c00),
            Values::BF16(_) => (2, 0x7f80),
            Values::Other(TensorDtype::F64, _) => {
                let mut bad = None;
                self.for_each_f64(|i, v| {
                    if bad.is_none() && !(v as f32).is_finite() {
                        bad = Some((i, v as f32));
                    }
                });
                return bad;
            }
            Values::Other(..) => return None,
        };
        let d = self.data();
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
                for i in 0..block.len() / width {
                    let idx = bi * BLOCK + i;
                    let v = self.value(idx);
                    if !v.is_finite() {
                        return Some((idx, v));
                    }
                }
            }
        }
        None
    }

    /// The first value that an integer tensor cannot take: fractional, not
    /// finite, or beyond ±2^24 (what the hub holds exactly).
    pub fn first_non_integer(&self) -> Option<(usize, f64)> {
        let mut bad = None;
        self.for_each_f64(|i, v| {
            if bad.is_none() && !(v.fract() == 0.0 && v.abs() <= MAX_EXACT_INT as f64) {
                bad = Some((i, v));
            }
        });
        bad
    }

    /// Every value in f64 (exact for every dtype but I64 beyond 2^53).
    fn for_each_f64(&self, mut f: impl FnMut(usize, f64)) {
        let d = self.data();
        match self.dtype() {
            TensorDtype::F64 => d
                .chunks_exact(8)
                .enumerate()
                .for_each(|(i, c)| f(i, f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))),
            TensorDtype::I64 => d
                .chunks_exact(8)
                .enumerate()
                .for_each(|(i, c)| f(i, i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64)),
            _ => self.for_each(|i, v| f(i, v as f64)),
        }
    }

    /// Calls `f(index, value)` for every value, as f32. Generic, so each
    /// caller's loop is compiled per dtype and vectorises.
    #[inline]
    pub fn for_each(&self, mut f: impl FnMut(usize, f32)) {
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
            Values::Other(dt, d) => {
                let w = dt.width();
                d.chunks_exact(w)
                    .enumerate()
                    .for_each(|(i, c)| f(i, other_value(*dt, c)))
            }
        }
    }

    pub fn write_into(&self, out: &mut [f32]) {
        self.for_each(|i, v| out[i] = v);
    }

    pub fn axpy_into(&self, out: &mut [f32], a: f32) {
        self.for_each(|i, v| out[i] += a * v);
    }

    /// Sum of squares in f64, in eight independent lanes so it vectorises
    /// (a single running sum cannot be reordered by the compiler).
    pub fn sum_squares(&self) -> f64 {
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

    fn value(&self, i: usize) -> f32 {
        let d = self.data();
        match self {
            Values::F32(_) => {
                f32::from_le_bytes([d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]])
            }
            Values::F16(_) => half::f16::from_le_bytes([d[2 * i], d[2 * i + 1]]).to_f32(),
            Values::BF16(_) => half::bf16::from_le_bytes([d[2 * i], d[2 * i + 1]]).to_f32(),
            Values::Other(dt, _) => {
                let w = dt.width();
                other_value(*dt, &d[w * i..w * (i + 1)])
            }
        }
    }
}

/// One value of an F64, integer or bool tensor as f32 (F64 rounded; I64
/// and I32 beyond 2^24 rounded too: the validation refuses those first).
#[inline]
fn other_value(dt: TensorDtype, c: &[u8]) -> f32 {
    let b8 = |c: &[u8]| -> [u8; 8] { c.try_into().unwrap_or([0; 8]) };
    let b4 = |c: &[u8]| -> [u8; 4] { c.try_into().unwrap_or([0; 4]) };
    match dt {
        TensorDtype::F64 => f64::from_le_bytes(b8(c)) as f32,
        TensorDtype::I64 => i64::from_le_bytes(b8(c)) as f32,
        TensorDtype::I32 => i32::from_le_bytes(b4(c)) as f32,
        TensorDtype::I16 => i16::from_le_bytes([c[0], c[1]]) as f32,
        TensorDtype::I8 => c[0] as i8 as f32,
        TensorDtype::U8 => c[0] as f32,
        TensorDtype::Bool => (c[0] != 0) as u8 as f32,
        TensorDtype::F32 => f32::from_le_bytes(b4(c)),
        TensorDtype::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
        TensorDtype::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_reads_back_and_integers_are_checked() {
        for dt in TensorDtype::ALL {
            let vals: Vec<f32> = if dt.is_float() {
                vec![0.5, -2.0, 3.0]
            } else if *dt == TensorDtype::Bool || *dt == TensorDtype::U8 {
                vec![1.0, 0.0, 1.0]
            } else {
                vec![-5.0, 0.0, 7.0]
            };
            let mut bytes = Vec::new();
            dt.write(&vals, &mut bytes);
            let v = Values::new(*dt, &bytes);
            let mut out = vec![0.0; 3];
            v.write_into(&mut out);
            assert_eq!(out, vals, "{dt}");
            assert_eq!(v.first_non_finite(), None, "{dt}");
            assert_eq!(
                v.sum_squares(),
                vals.iter().map(|x| (*x as f64).powi(2)).sum::<f64>()
            );
        }
        let mut b = Vec::new();
        TensorDtype::F32.write(&[1.0, 2.5], &mut b);
        assert_eq!(
            Values::new(TensorDtype::F32, &b).first_non_integer(),
            Some((1, 2.5))
        );
        let big = (1i64 << 25).to_le_bytes();
        assert_eq!(
            Values::new(TensorDtype::I64, &big).first_non_integer(),
            Some((0, (1i64 << 25) as f64))
        );
        let huge = 1e300f64.to_le_bytes();
        let (i, v) = Values::new(TensorDtype::F64, &huge)
            .first_non_finite()
            .unwrap();
        assert_eq!((i, v), (0, f32::INFINITY));
        let half = 0.5f64.to_le_bytes();
        assert_eq!(
            Values::new(TensorDtype::F64, &half).first_non_integer(),
            Some((0, 0.5))
        );
    }
}
