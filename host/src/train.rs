//! Short training of a finalist: KNAS's fine-grained selection step.
//!
//! NB201's training recipe, shortened: SGD with Nesterov momentum 0.9, learning rate 0.1
//! decayed to zero on a cosine over all steps, weight decay 5e-4, cross-entropy loss;
//! random crop (4-pixel padding) and horizontal flip for CIFAR. All data stays on the device.

use std::f64::consts::PI;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tch::nn::OptimizerConfig;
use tch::{Kind, Reduction, Tensor, nn};

use crate::data::{Augment, TensorData};
use crate::model::{Network, NetworkSpec, NormMode};
use crate::space::Arch;

/// Hyper-parameters of a training run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Default for TrainConfig {
    fn default() -> TrainConfig {
        TrainConfig { epochs: 1, batch_size: 64, learning_rate: 0.1, momentum: 0.9, weight_decay: 5e-4 }
    }
}

/// The most epochs a training may run.
pub const MAX_EPOCHS: usize = 10_000;

impl TrainConfig {
    /// Checks the settings; the message starts with the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.epochs == 0 || self.batch_size == 0 {
            let key = if self.epochs == 0 { "epochs" } else { "batch-size" };
            return Err(format!("{key} must be at least 1, got 0"));
        }
        // Keeps the step count (epochs × steps per epoch) far from overflowing.
        if self.epochs > MAX_EPOCHS {
            return Err(format!("epochs must be at most {MAX_EPOCHS}, got {}", self.epochs));
        }
        let ranges = [
            ("learning-rate", self.learning_rate, self.learning_rate > 0.0),
            ("momentum", self.momentum, (0.0..1.0).contains(&self.momentum)),
            ("weight-decay", self.weight_decay, self.weight_decay >= 0.0),
        ];
        match ranges.iter().find(|(_, value, ok)| !(value.is_finite() && *ok)) {
            Some((key, value, _)) => Err(format!("{key} is out of range: {value}")),
            None => Ok(()),
        }
    }
}

/// What a training run measured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainResult {
    /// Mean training loss over the last epoch.
    pub train_loss: f64,
    /// Mean cross-entropy on the held-out images.
    pub heldout_loss: f64,
    /// Fraction of held-out images classified correctly.
    pub heldout_accuracy: f64,
    pub epochs: usize,
    /// Wall time, held-out evaluation included.
    pub seconds: f64,
    /// Training images processed per second (evaluation excluded).
    pub images_per_second: f64,
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("libtorch failed while training: {0}")]
    Torch(#[from] tch::TchError),
    #[error("training diverged: the loss became {0} in epoch {1}")]
    Diverged(f64, usize),
    #[error("the trained network's held-out loss is {0}: its outputs overflow")]
    NotFinite(f64),
    #[error("nothing to train on: {0}")]
    Empty(&'static str),
    #[error("training cancelled after {0} of {1} steps")]
    Cancelled(usize, usize),
    /// A panic while training (a libtorch error in tch's infallible API), caught by
    /// [`crate::engine::Engine::train_for`].
    #[error("training panicked: {0}")]
    Panicked(String),
}

/// One training job: an architecture, its data, its settings.
pub struct Trainer<'a> {
    pub spec: NetworkSpec,
    pub config: TrainConfig,
    pub train: &'a TensorData,
    pub heldout: &'a TensorData,
    pub augment: Augment,
}

impl Trainer<'_> {
    /// Trains `arch` from the weights `init_seed` gives, shuffling and augmenting with
    /// `train_seed`. `on_step(done, total)` is called after every optimiser step; when
    /// `cancelled()` turns true the run stops at the next step with
    /// [`TrainError::Cancelled`].
    pub fn run(
        &self,
        arch: &Arch,
        init_seed: u64,
        train_seed: u64,
        on_step: &mut dyn FnMut(usize, usize),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<TrainResult, TrainError> {
        let start = Instant::now();
        let n = self.train.labels.size()[0] as usize;
        if n == 0 || self.config.epochs == 0 {
            return Err(TrainError::Empty(if n == 0 { "no training images" } else { "zero epochs" }));
        }
        let device = self.train.images.device();
        let mut vs = nn::VarStore::new(device);
        let net = Network::new(&vs.root(), &self.spec, &(*arch).into(), init_seed);
        if self.train.images.kind() != Kind::Float {
            vs.set_kind(self.train.images.kind());
        }
        let c = &self.config;
        // Nesterov momentum needs some momentum (libtorch refuses it at 0): plain SGD then.
        let nesterov = c.momentum > 0.0;
        let mut opt = nn::Sgd { momentum: c.momentum, dampening: 0.0, wd: c.weight_decay, nesterov }.build(&vs, c.learning_rate)?;
        let mut rng = ChaCha8Rng::seed_from_u64(train_seed);
        let batch = c.batch_size.max(1);
        let steps_per_epoch = n.div_ceil(batch);
        let total_steps = steps_per_epoch * c.epochs;
        let mut step = 0;
        let mut train_loss = 0.0;
        for epoch in 0..c.epochs {
            let mut order: Vec<i64> = (0..n as i64).collect();
            order.shuffle(&mut rng);
            let mut epoch_loss = Tensor::zeros([], (Kind::Double, device));
            for chunk in order.chunks(batch) {
                if cancelled() {
                    return Err(TrainError::Cancelled(step, total_steps));
                }
                fail::fail_point!("train::step");
                let index = Tensor::from_slice(chunk).to_device(device);
                let x = self.augmented(&self.train.images.f_index_select(0, &index)?, &mut rng)?;
                let y = self.train.labels.f_index_select(0, &index)?;
                // Cosine decay from the initial rate towards zero over the whole run.
                opt.set_lr(0.5 * c.learning_rate * (1.0 + (PI * step as f64 / total_steps as f64).cos()));
                let loss = net.forward(&x, NormMode::Train).f_cross_entropy_loss::<&Tensor>(&y, None, Reduction::Mean, -100, 0.0)?;
                opt.backward_step(&loss);
                epoch_loss += loss.detach().to_kind(Kind::Double) * chunk.len() as f64;
                step += 1;
                on_step(step, total_steps);
            }
            train_loss = epoch_loss.f_double_value(&[])? / n as f64;
            if !train_loss.is_finite() {
                return Err(TrainError::Diverged(train_loss, epoch + 1));
            }
        }
        let train_seconds = start.elapsed().as_secs_f64();
        let (heldout_loss, heldout_accuracy) = evaluate(&net, self.heldout)?;
        // Recorded or ranked, a non-finite loss would read as a result; it is a failure.
        if !heldout_loss.is_finite() {
            return Err(TrainError::NotFinite(heldout_loss));
        }
        Ok(TrainResult {
            train_loss,
            heldout_loss,
            heldout_accuracy,
            epochs: c.epochs,
            seconds: start.elapsed().as_secs_f64(),
            images_per_second: (n * c.epochs) as f64 / train_seconds,
        })
    }

    /// Applies the dataset's augmentation to a batch.
    fn augmented(&self, x: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor, tch::TchError> {
        match self.augment {
            Augment::None => Ok(x.shallow_clone()),
            Augment::CropFlip => crop_flip(x, rng),
        }
    }
}

/// Random 4-pixel-padded crop and random horizontal flip, per image.
fn crop_flip(x: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor, tch::TchError> {
    const PAD: i64 = 4;
    let size = x.size();
    let (b, h, w) = (size[0], size[2], size[3]);
    let padded = x.f_constant_pad_nd([PAD, PAD, PAD, PAD])?;
    let mut crops = Vec::with_capacity(b as usize);
    for i in 0..b {
        let (dy, dx) = (rng.random_range(0..=2 * PAD), rng.random_range(0..=2 * PAD));
        let crop = padded.f_narrow(0, i, 1)?.f_narrow(2, dy, h)?.f_narrow(3, dx, w)?;
        crops.push(if rng.random_bool(0.5) { crop.f_flip([3])? } else { crop });
    }
    Tensor::f_cat(&crops, 0)
}

/// Mean loss and accuracy on `data`, BN in evaluation mode.
pub fn evaluate(net: &Network, data: &TensorData) -> Result<(f64, f64), tch::TchError> {
    let _guard = tch::no_grad_guard();
    let n = data.labels.size()[0];
    let device = data.images.device();
    let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
    let mut correct = Tensor::zeros([], (Kind::Int64, device));
    const CHUNK: i64 = 500;
    let mut start = 0;
    while start < n {
        let len = CHUNK.min(n - start);
        let x = data.images.f_narrow(0, start, len)?;
        let y = data.labels.f_narrow(0, start, len)?;
        let logits = net.forward(&x, NormMode::Eval);
        loss_sum += logits.f_cross_entropy_loss::<&Tensor>(&y, None, Reduction::Sum, -100, 0.0)?.to_kind(Kind::Double);
        correct += logits.f_argmax(-1, false)?.f_eq_tensor(&y)?.f_sum(Kind::Int64)?;
        start += len;
    }
    let n = n.max(1) as f64;
    Ok((loss_sum.f_double_value(&[])? / n, correct.f_double_value(&[])? / n))
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;
    use crate::data::{DatasetSpec, Holdout, Normalization, Split};

    #[test]
    fn training_learns_and_is_reproducible() {
        let split = Split::load(&DatasetSpec::Mnist5k, Holdout::Fraction(0.1), Some(1000), 0).unwrap();
        let norm = Normalization::of(&split.train);
        let train = norm.apply(&split.train, Device::Cpu, Kind::Float).unwrap();
        let heldout = norm.apply(&split.heldout, Device::Cpu, Kind::Float).unwrap();
        let spec = NetworkSpec { channels: 8, cells: 1, in_channels: 1, image_size: (28, 28), num_classes: 10 };
        let trainer = Trainer {
            spec,
            config: TrainConfig { epochs: 3, batch_size: 50, ..TrainConfig::default() },
            train: &train,
            heldout: &heldout,
            augment: Augment::None,
        };
        let arch: Arch = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"
            .parse()
            .unwrap();
        let mut steps = 0;
        let a = trainer
            .run(
                &arch,
                0,
                0,
                &mut |done, total| {
                    steps = done;
                    assert_eq!(total, 3 * 20);
                },
                &|| false,
            )
            .unwrap();
        assert_eq!(steps, 3 * 20);
        // Far better than chance (10%) after three short epochs on real digits.
        assert!(a.heldout_accuracy > 0.5, "{a:?}");
        assert!(a.heldout_loss < 2.0 && a.train_loss < 2.0, "{a:?}");
        let b = trainer.run(&arch, 0, 0, &mut |_, _| {}, &|| false).unwrap();
        assert_eq!(a.heldout_accuracy, b.heldout_accuracy);
        assert!((a.train_loss - b.train_loss).abs() < 1e-9);
        // Cancelled between steps: after the step that asked, nothing more is done.
        let mut done = 0;
        let cancelled = std::cell::Cell::new(false);
        let err = trainer
            .run(
                &arch,
                0,
                0,
                &mut |step, _| {
                    done = step;
                    cancelled.set(step == 5);
                },
                &|| cancelled.get(),
            )
            .unwrap_err();
        assert!(matches!(err, TrainError::Cancelled(5, 60)), "{err}");
        assert_eq!(done, 5);
        // Momentum 0, which the settings allow, is plain SGD (libtorch refuses Nesterov's).
        let plain = Trainer { config: TrainConfig { epochs: 1, batch_size: 50, momentum: 0.0, ..TrainConfig::default() }, ..trainer };
        let result = plain.run(&arch, 0, 0, &mut |_, _| {}, &|| false).unwrap();
        // Twenty plain steps learn little, but they learn: the loss falls below chance's ln 10.
        assert!(result.train_loss < std::f64::consts::LN_10 - 0.03 && result.heldout_loss.is_finite(), "{result:?}");
    }

    #[test]
    fn crop_flip_keeps_shape_and_moves_pixels() {
        let x = Tensor::arange(2 * 3 * 8 * 8, (Kind::Float, Device::Cpu)).view([2, 3, 8, 8]);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let y = crop_flip(&x, &mut rng).unwrap();
        assert_eq!(y.size(), x.size());
        assert!(!y.equal(&x));
    }
}
