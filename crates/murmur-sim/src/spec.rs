//! A scenario value: either fixed, or a range the seed picks from.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A number a scenario either fixes (`nodes = 5`) or leaves to the seed
/// within inclusive bounds (`nodes = [3, 7]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Spec<T> {
    /// Always this value.
    Fixed(T),
    /// A value between the two bounds, both included, drawn per seed.
    Range([T; 2]),
}

impl<T: Copy + PartialOrd + fmt::Display> Spec<T> {
    /// The lower and upper bounds (equal for a fixed value).
    pub fn bounds(&self) -> (T, T) {
        match *self {
            Spec::Fixed(value) => (value, value),
            Spec::Range([low, high]) => (low, high),
        }
    }

    /// An error message if the range is upside down or leaves `[min, max]`.
    pub fn check(&self, min: T, max: T) -> Result<(), String> {
        let (low, high) = self.bounds();
        if low > high {
            return Err(format!("range [{low}, {high}] is upside down"));
        }
        if low < min || high > max {
            return Err(format!("{low}..={high} is outside {min}..={max}"));
        }
        Ok(())
    }
}

/// Draws from an inclusive integer range.
pub trait Draw<T> {
    /// A value between the bounds (both included).
    fn draw(&self, rng: &mut impl Rng) -> T;
}

impl Draw<u64> for Spec<u64> {
    fn draw(&self, rng: &mut impl Rng) -> u64 {
        let (low, high) = self.bounds();
        rng.gen_range(low..=high)
    }
}

impl Draw<i64> for Spec<i64> {
    fn draw(&self, rng: &mut impl Rng) -> i64 {
        let (low, high) = self.bounds();
        rng.gen_range(low..=high)
    }
}

impl Draw<f64> for Spec<f64> {
    fn draw(&self, rng: &mut impl Rng) -> f64 {
        let (low, high) = self.bounds();
        if low >= high {
            low
        } else {
            rng.gen_range(low..=high)
        }
    }
}

impl Draw<u64> for (u64, u64) {
    fn draw(&self, rng: &mut impl Rng) -> u64 {
        rng.gen_range(self.0..=self.1.max(self.0))
    }
}

impl Draw<i64> for (i64, i64) {
    fn draw(&self, rng: &mut impl Rng) -> i64 {
        rng.gen_range(self.0..=self.1.max(self.0))
    }
}

impl Draw<f64> for (f64, f64) {
    fn draw(&self, rng: &mut impl Rng) -> f64 {
        if self.0 >= self.1 {
            self.0
        } else {
            rng.gen_range(self.0..=self.1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_value_and_a_range_parse_from_toml() {
        #[derive(Deserialize)]
        struct Doc {
            a: Spec<u64>,
            b: Spec<f64>,
        }
        let doc: Doc = toml::from_str("a = 5\nb = [0.0, 0.5]").expect("parses");
        assert_eq!(doc.a, Spec::Fixed(5));
        assert_eq!(doc.b, Spec::Range([0.0, 0.5]));
    }

    #[test]
    fn an_upside_down_range_is_rejected() {
        assert!(Spec::Range([5_u64, 3]).check(0, 10).is_err());
        assert!(Spec::Fixed(11_u64).check(0, 10).is_err());
        assert!(Spec::Range([1_u64, 3]).check(0, 10).is_ok());
    }
}
