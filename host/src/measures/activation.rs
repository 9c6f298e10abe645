//! Activation patterns: which ReLUs fire for which images. Both measures read the sign of
//! every ReLU's input (its binary *code*) in one forward pass with BN on batch statistics,
//! every node computed as NB201's own network computes it.
//!
//! - **NASWOT** (Mellor et al., "Neural Architecture Search without Training", ICML 2021):
//!   `K_H[i,j]` = number of units on which images i and j have the same code; the score is
//!   ln |det K_H|. Networks that give different images different codes score higher.
//! - **SWAP** (Peng et al., "SWAP-NAS: Sample-Wise Activation Patterns", ICLR 2024): each
//!   unit's codes across 16 images form a 16-bit pattern; the score is the number of
//!   distinct patterns over all units of the network.

use std::cell::RefCell;

use tch::{Kind, Tensor};

use super::{Measure, MeasureError, Values};
use crate::model::Tap;

/// Images whose patterns SWAP counts (the paper's setting).
pub const SWAP_IMAGES: i64 = 16;

/// Accumulates codes during a forward pass (a [`Tap`]); the first libtorch error is kept.
pub(super) struct Codes {
    naswot: Option<RefCell<Result<Tensor, tch::TchError>>>,
    swap: Option<RefCell<Result<SwapPatterns, tch::TchError>>>,
    /// NaN entries seen in ReLU inputs (on the device, read once at the end): a NaN has no
    /// sign, so a network whose activations overflowed gets no code-based value at all.
    nans: RefCell<Option<Tensor>>,
    batch: i64,
}

/// Which of the 2^16 patterns have been seen.
struct SwapPatterns {
    seen: Vec<u64>,
    /// 2^k, one per image, to pack a unit's codes into its pattern number.
    bits: Tensor,
}

impl Codes {
    pub(super) fn new(naswot: bool, swap: bool, batch: i64, device: tch::Device) -> Codes {
        let images = SWAP_IMAGES.min(batch);
        Codes {
            naswot: naswot.then(|| RefCell::new(Tensor::f_zeros([batch, batch], (Kind::Double, device)))),
            swap: swap.then(|| {
                let bits: Vec<i64> = (0..images).map(|k| 1i64 << k).collect();
                let bits = Tensor::from_slice(&bits).view([images, 1]).to_device(device);
                RefCell::new(Ok(SwapPatterns { seen: vec![0; 1 << (images - 6).max(0)], bits }))
            }),
            nans: RefCell::new(None),
            batch,
        }
    }

    /// Whether any measure is collecting codes.
    pub(super) fn active(&self) -> bool {
        self.naswot.is_some() || self.swap.is_some()
    }

    /// Writes the measures collected.
    pub(super) fn finish(&self, values: &mut Values) -> Result<(), MeasureError> {
        let nans = self.nans.borrow_mut().take();
        if nans.map(|n| n.f_int64_value(&[])).transpose()?.is_some_and(|n| n > 0) {
            for (measure, active) in [(Measure::Naswot, self.naswot.is_some()), (Measure::Swap, self.swap.is_some())] {
                if active {
                    values.insert(measure, None);
                }
            }
            return Ok(());
        }
        if let Some(kernel) = &self.naswot {
            let kernel = std::mem::replace(&mut *kernel.borrow_mut(), Ok(Tensor::new()))?;
            let (_sign, log_abs_det) = Tensor::f_linalg_slogdet(&kernel)?;
            values.insert(Measure::Naswot, super::finite(log_abs_det.f_double_value(&[])?));
        }
        if let Some(patterns) = &self.swap {
            let patterns = std::mem::replace(&mut *patterns.borrow_mut(), Ok(SwapPatterns { seen: vec![], bits: Tensor::new() }))?;
            let distinct: u32 = patterns.seen.iter().map(|w| w.count_ones()).sum();
            values.insert(Measure::Swap, Some(f64::from(distinct)));
        }
        Ok(())
    }
}

impl Tap for Codes {
    fn relu_input(&self, x: &Tensor) {
        let _no_grad = tch::no_grad_guard();
        if let Ok(count) = x.f_isnan().and_then(|n| n.f_sum(Kind::Int64)) {
            let mut nans = self.nans.borrow_mut();
            *nans = Some(match nans.take() {
                Some(total) => total.f_add(&count).unwrap_or(count),
                None => count,
            });
        }
        if let Some(kernel) = &self.naswot {
            let mut kernel = kernel.borrow_mut();
            if let Ok(k) = &*kernel {
                *kernel = agreements(x).and_then(|a| k.f_add(&a));
            }
        }
        if let Some(patterns) = &self.swap {
            let mut patterns = patterns.borrow_mut();
            if let Ok(p) = &mut *patterns
                && let Err(e) = p.add(x, self.batch)
            {
                *patterns = Err(e);
            }
        }
    }
}

impl SwapPatterns {
    fn add(&mut self, x: &Tensor, batch: i64) -> Result<(), tch::TchError> {
        let images = self.bits.size()[0].min(batch);
        let codes = x.f_narrow(0, 0, images)?.f_gt(0.0)?.f_flatten(1, -1)?.f_to_kind(Kind::Int64)?;
        let numbers = codes.f_mul(&self.bits)?.f_sum_dim_intlist(0, false, Kind::Int64)?;
        let numbers = Vec::<i64>::try_from(numbers.f_to_device(tch::Device::Cpu)?)?;
        for n in numbers {
            let n = n as usize;
            if let Some(word) = self.seen.get_mut(n / 64) {
                *word |= 1 << (n % 64);
            }
        }
        Ok(())
    }
}

/// Per pair of images, the number of units of this ReLU input on which their codes
/// (x > 0) agree: c_i·c_j + (1−c_i)·(1−c_j) = D − |c_i| − |c_j| + 2 c_i·c_j. The product
/// runs in single precision, which counts exactly up to 2²⁴ units per ReLU (NB201's
/// largest has 2¹⁴ per image at C=16); the kernel is summed in double.
fn agreements(x: &Tensor) -> Result<Tensor, tch::TchError> {
    let codes = x.f_gt(0.0)?.f_flatten(1, -1)?.f_to_kind(Kind::Float)?;
    let units = codes.size()[1] as f64;
    let ones = codes.f_sum_dim_intlist(1, false, Kind::Double)?;
    codes
        .f_mm(&codes.f_transpose(0, 1)?)?
        .f_to_kind(Kind::Double)?
        .f_mul_scalar(2.0)?
        .f_sub(&ones.f_unsqueeze(1)?)?
        .f_sub(&ones.f_unsqueeze(0)?)?
        .f_add_scalar(units)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measures::Suite;
    use crate::measures::tests::{CONVS, tiny_suite};

    #[test]
    fn naswot_counts_agreeing_units_so_identical_images_make_the_kernel_singular() {
        let s = tiny_suite(8, Kind::Float, 3);
        let (images, labels) = s.batch();
        let twice = Tensor::cat(&[images.narrow(0, 0, 1), images.narrow(0, 0, 1)], 0);
        let same = Suite::new(*s.spec(), twice, labels.narrow(0, 0, 2), 3);
        // Two equal images agree on every unit: K_H is D·[[1,1],[1,1]], determinant zero.
        let value = same.measure(&CONVS.parse().unwrap(), &[Measure::Naswot]).unwrap().get(Measure::Naswot);
        assert!(value.is_none_or(|v| v < -20.0), "log|det| of a singular kernel should be missing or hugely negative, got {value:?}");
        let distinct = s.measure(&CONVS.parse().unwrap(), &[Measure::Naswot]).unwrap().get(Measure::Naswot).unwrap();
        assert!(distinct > 10.0, "distinct images: {distinct}");
    }

    #[test]
    fn swap_counts_distinct_patterns_of_units() {
        // Three units over two images: patterns (1,0), (1,0) and (0,1): two distinct.
        let x = Tensor::from_slice(&[1.0f32, 2.0, -1.0, -1.0, -3.0, 4.0]).view([2, 3]);
        let codes = Codes::new(false, true, 2, tch::Device::Cpu);
        codes.relu_input(&x);
        let mut values = Values::new();
        codes.finish(&mut values).unwrap();
        assert_eq!(values[&Measure::Swap], Some(2.0));
    }

    #[test]
    fn a_nan_activation_leaves_both_measures_missing() {
        let nan = Tensor::from_slice(&[1.0f32, f32::NAN, -1.0, -1.0, -3.0, 4.0]).view([2, 3]);
        let codes = Codes::new(true, true, 2, tch::Device::Cpu);
        codes.relu_input(&Tensor::from_slice(&[1.0f32, 2.0, -1.0, -1.0, -3.0, 4.0]).view([2, 3]));
        codes.relu_input(&nan);
        let mut values = Values::new();
        codes.finish(&mut values).unwrap();
        assert_eq!((values[&Measure::Naswot], values[&Measure::Swap]), (None, None));
    }
}
