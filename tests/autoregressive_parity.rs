//! The autoregressive family against the PyTorch networks of `scripts/train_ar_reference.py`
//! (small widths; FVSBN, AR-N and the 256-way PixelCNN at 10 x 10, the rest at 28 x 28), with
//! the weights torch initialised loaded by their names: for one fixed batch, the logits of every
//! conditional, the training loss (NLL summed per image in nats, batch mean: what
//! `LikelihoodTraining` minimises) and the gradient of every parameter. The reference computes
//! in float64 from the same float32 weights and inputs, so the differences are genzoo's float32
//! rounding alone (torch's own float32 gradients stray 1.1e-5 of their scale from it in
//! PixelCNN): logits to 1e-5, the loss and the gradients to 1e-5 of their largest entry.
//! Fixtures from `scripts/make_ar_fixtures.py`.

#[path = "common/parity.rs"]
mod parity;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use layers::train::checkpoint::{load_into_varmap, vars_with_prefix};
use layers::{Checkpoint, Objective, Rng};
use parity::{assert_close, assert_gradients_close, fixture, gradient_pairs, max_abs, tagged};
use pixelrnn::ar::{Autoregressive, Output};
use pixelrnn::diagonal_bilstm::DiagonalBiLstm;
use pixelrnn::fvsbn::{self, Fvsbn};
use pixelrnn::nade::{self, Nade};
use pixelrnn::pixelcnn::{self, PixelCnn};
use pixelrnn::pixelrnn::Config as RnnConfig;
use pixelrnn::row_lstm::RowLstm;

const FIXTURE: &str = "autoregressive";

/// To 1e-5 of the reference's largest entry (or of 1): a loss summed over 784 pixels is in
/// the hundreds, where float32 itself resolves only about 6e-5.
fn assert_scaled_close(name: &str, got: &Tensor, want: &Tensor) -> Result<()> {
    assert_close(name, got, want, 1e-5 * max_abs(want)?.max(1.0))
}

/// Builds the model with `build`, loads the fixture's `{prefix}.param.*` into it (every
/// variable, nothing left over), and compares logits, loss and every gradient.
fn assert_matches_reference<M, F>(prefix: &str, build: F) -> Result<()>
where
    M: Autoregressive + Objective,
    F: FnOnce(VarBuilder) -> candle_core::Result<M>,
{
    let ck = Checkpoint::load(&fixture(FIXTURE), &Device::Cpu)?;
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
    let model = build(vb)?;
    let params = tagged(&ck, &format!("{prefix}.param"));
    let unused = load_into_varmap(&varmap, &params, &fixture(FIXTURE))?;
    assert!(
        unused.is_empty(),
        "reference tensors the model lacks: {unused:?}"
    );

    let t = |name: &str| ck.tensors[&format!("{prefix}.{name}")].clone();
    let x = t("x");
    assert_close(
        &format!("{prefix} logits"),
        &model.logits(&x)?,
        &t("logits"),
        1e-5,
    )?;
    let loss = model.loss(&x, &mut Rng::new(0))?.value;
    assert_scaled_close(&format!("{prefix} loss"), &loss.reshape(1)?, &t("loss"))?;

    let grads = loss.backward()?;
    let want = tagged(&ck, &format!("{prefix}.grad"));
    let vars = vars_with_prefix(&varmap, "");
    assert_eq!(vars.len(), want.len(), "{prefix}: a gradient per parameter");
    assert_gradients_close(&gradient_pairs(&grads, &vars, &want))
}

fn pixelcnn_config(image_size: usize, output: Output) -> pixelcnn::Config {
    pixelcnn::Config {
        image_size,
        channels: 1,
        hidden: 8,
        layers: 2,
        first_kernel: 7,
        kernel: 3,
        head_hidden: 8,
        output,
    }
}

fn rnn_config() -> RnnConfig {
    RnnConfig {
        image_size: 28,
        channels: 1,
        hidden: 4,
        layers: 2,
        first_kernel: 7,
        head_hidden: 8,
        output: Output::Bernoulli,
    }
}

/// `Fvsbn()`: one logistic regression per pixel on every earlier pixel (10 x 10 digit crops).
#[test]
fn fvsbn_matches_reference() -> Result<()> {
    let cfg = fvsbn::Config {
        image_size: 10,
        channels: 1,
        window: 0,
    };
    assert_matches_reference("fvsbn", |vb| Fvsbn::new(&cfg, vb))
}

/// `Fvsbn(window=28)`: AR-N, each pixel on the 28 before it (10 x 10 digit crops, so the band
/// is narrower than the triangle for most pixels).
#[test]
fn ar_n_matches_reference() -> Result<()> {
    let cfg = fvsbn::Config {
        image_size: 10,
        channels: 1,
        window: 28,
    };
    assert_matches_reference("ar_n", |vb| Fvsbn::new(&cfg, vb))
}

/// `Nade(hidden=8)`: the O(DH) cumulative-sum form against genzoo's fused sigmoid scan.
#[test]
fn nade_matches_reference() -> Result<()> {
    let cfg = nade::Config {
        image_size: 28,
        channels: 1,
        hidden: 8,
    };
    assert_matches_reference("nade", |vb| Nade::new(&cfg, vb))
}

/// `PixelCnn(hidden=8, layers=2)`: 7x7 mask A, 2 x (3x3 mask B + ReLU), the 1x1 head, one
/// Bernoulli logit per pixel.
#[test]
fn pixelcnn_bernoulli_matches_reference() -> Result<()> {
    let cfg = pixelcnn_config(28, Output::Bernoulli);
    assert_matches_reference("pixelcnn", |vb| PixelCnn::new(&cfg, vb))
}

/// The same PixelCNN with its last 1x1 layer widened to 256 logits per pixel, a softmax over
/// the intensity levels (10 x 10 random intensities), the loss its cross entropy.
#[test]
fn pixelcnn_softmax_matches_reference() -> Result<()> {
    let cfg = pixelcnn_config(10, Output::Softmax);
    assert_matches_reference("pixelcnn_softmax", |vb| PixelCnn::new(&cfg, vb))
}

/// `PixelRnn(RowLstmLayer, h=4, layers=2, head_hidden=8)`: masked 1x3 input-to-state, 1x3
/// state-to-state row by row, residual 1x1 convolutions.
#[test]
fn row_lstm_matches_reference() -> Result<()> {
    assert_matches_reference("row_lstm", |vb| RowLstm::new(&rnn_config(), vb))
}

/// `PixelRnn(DiagonalBiLstmLayer, h=4, layers=2, head_hidden=8)`: skewed 1x1 input-to-state,
/// 2x1 state-to-state column by column, both directions, the right one shifted down a row.
#[test]
fn diagonal_bilstm_matches_reference() -> Result<()> {
    assert_matches_reference("diagonal_bilstm", |vb| {
        DiagonalBiLstm::new(&rnn_config(), vb)
    })
}
