//! Range checks for numeric settings. Every number a user or an admin can set
//! (config file, environment, REST, scenario) is checked where it enters, so
//! an absurd value is refused with the key and the range instead of
//! overflowing a duration or an allocation later.

use std::fmt::Display;

/// A setting's numeric value, widened for comparison.
pub trait Num: Copy + Display {
    fn as_f64(self) -> f64;
}

macro_rules! num {
    ($($t:ty),*) => { $( impl Num for $t { fn as_f64(self) -> f64 { self as f64 } } )* };
}
num!(u32, u64, usize, i64, f32, f64);

/// Renders a bound or a value readably: 1e300 as `1e300`, not 301 digits.
pub fn show(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e9 || v.abs() < 1e-3) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// How the ends of a range are included.
#[derive(Debug, Clone, Copy)]
pub enum Ends {
    /// `lo <= v <= hi`
    Closed,
    /// `lo < v <= hi`
    OpenLow,
    /// `lo <= v < hi`
    OpenHigh,
}

/// Checks `v` against a range; the error names the range and the value.
pub fn check<T: Num>(v: T, lo: f64, hi: f64, ends: Ends) -> Result<(), String> {
    let x = v.as_f64();
    let ok = x.is_finite()
        && match ends {
            Ends::Closed => lo <= x && x <= hi,
            Ends::OpenLow => lo < x && x <= hi,
            Ends::OpenHigh => lo <= x && x < hi,
        };
    if ok {
        return Ok(());
    }
    let range = match ends {
        Ends::Closed => format!("between {} and {}", show(lo), show(hi)),
        Ends::OpenLow => format!("above {} and at most {}", show(lo), show(hi)),
        Ends::OpenHigh => format!("at least {} and below {}", show(lo), show(hi)),
    };
    Err(format!("must be {range} (got {})", show(x)))
}

/// [`check`] with the key in front of the message.
pub fn key<T: Num>(name: &str, v: T, lo: f64, hi: f64, ends: Ends) -> Result<(), String> {
    check(v, lo, hi, ends).map_err(|e| format!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_range_and_the_value() {
        assert!(check(5usize, 1.0, 10.0, Ends::Closed).is_ok());
        let e = key("round_timeout_secs", 1e300, 0.0, 604800.0, Ends::OpenLow).unwrap_err();
        assert_eq!(
            e,
            "round_timeout_secs: must be above 0 and at most 604800 (got 1e300)"
        );
        assert!(check(f64::NAN, 0.0, 1.0, Ends::Closed).is_err());
        assert!(check(1.0f32, 0.0, 1.0, Ends::OpenHigh).is_err());
        assert!(check(0.0f32, 0.0, 1.0, Ends::OpenLow).is_err());
    }
}
