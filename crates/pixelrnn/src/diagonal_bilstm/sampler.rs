//! The Diagonal BiLSTM's incremental sampler: each pixel's new values from cached states, one
//! position per layer and direction, instead of a whole forward pass per pixel. It draws the
//! same images as the reference loop from the same uniforms.
//!
//! In unskewed coordinates (the skew only orders the reference's scan), layer `l` has
//! - left to right: `L(r, c)` from the layer's input at `(r, c)`, `L(r - 1, c)` (tap 0, the
//!   previous skewed column's row above) and `L(r, c - 1)` (tap 1, and its cell);
//! - right to left: `R(r, c)` from the input at `(r, c)`, `R(r - 1, c)` and `R(r, c + 1)`;
//! - output `x(r, c) + residual(L(r, c) + R(r - 1, c))`: the one-row shift.
//!
//! When pixel `(r, c)` is drawn, `L(r, c - 1)` and `L(r - 1, c)` are final, so `L(r, c)` is one
//! step. `R(r - 1, c)` reads the layer's inputs at `(r - 1, c..W)`, which are final only once
//! row `r - 1` has been drawn to its end: so each row's right-to-left states are computed in one
//! sweep, right to left, after the row's last pixel, which is before the next row reads them.
//!
//! The reference pads the skewed map with zeros, and a padding position's state is not zero:
//! its gates get the input-to-state bias and the padding states before it. Row `r`'s first
//! pixel in each direction (column 0; column `W - 1` right to left) reads one beside it. They
//! do not depend on the image, so each direction computes them once
//! ([`Direction::padding_edges`]).
//!
//! With colours, a pixel's values are recomputed for each of its channels, as in
//! [`crate::cached`]. Per image the work is one forward pass, in parallel over the images.

use candle_core::{Result, Tensor};
use layers::kernels::simd;
use rayon::prelude::*;

use super::{DiagonalBiLstm, DiagonalLstm};
use crate::ar::Autoregressive;
use crate::cached::CachedConv;
use crate::output::Output;

/// `n` images from `uniforms` `(n, c, h, w)`, in parallel over the images.
pub(super) fn sample(model: &DiagonalBiLstm, uniforms: &[f32], n: usize) -> Result<Tensor> {
    let sampler = Sampler::new(model)?;
    let [c, h, w] = sampler.shape;
    let dims = c * h * w;
    let images: Vec<Vec<f32>> = (0..n)
        .into_par_iter()
        .map(|k| sampler.sample_one(&uniforms[k * dims..][..dims]))
        .collect();
    Tensor::from_vec(images.concat(), (n, c, h, w), model.device())
}

/// An LSTM state at one position.
#[derive(Clone)]
struct Cell {
    h: Vec<f32>,
    c: Vec<f32>,
}

impl Cell {
    fn zeros(hidden: usize) -> Self {
        Self {
            h: vec![0.0; hidden],
            c: vec![0.0; hidden],
        }
    }
}

/// The work space of one step.
struct Work {
    gates: Vec<f32>,
    recurrent: Vec<f32>,
    /// `[h above; h beside]`, the state-to-state input.
    previous: Vec<f32>,
    cell: Cell,
}

impl Work {
    fn new(hidden: usize) -> Self {
        Self {
            gates: vec![0.0; 4 * hidden],
            recurrent: vec![0.0; 4 * hidden],
            previous: vec![0.0; 2 * hidden],
            cell: Cell::zeros(hidden),
        }
    }
}

/// One direction's states of one layer at every position, `(H, W, hidden)` each.
struct States {
    h: Vec<f32>,
    c: Vec<f32>,
    width: usize,
    hidden: usize,
}

impl States {
    fn new([rows, width]: [usize; 2], hidden: usize) -> Self {
        Self {
            h: vec![0.0; rows * width * hidden],
            c: vec![0.0; rows * width * hidden],
            width,
            hidden,
        }
    }

    fn offset(&self, (r, c): (usize, usize)) -> usize {
        (r * self.width + c) * self.hidden
    }

    fn h(&self, pos: (usize, usize)) -> &[f32] {
        &self.h[self.offset(pos)..][..self.hidden]
    }

    fn at(&self, pos: (usize, usize)) -> (&[f32], &[f32]) {
        let at = self.offset(pos);
        (&self.h[at..][..self.hidden], &self.c[at..][..self.hidden])
    }

    fn set(&mut self, pos: (usize, usize), cell: &Cell) {
        let at = self.offset(pos);
        self.h[at..][..self.hidden].copy_from_slice(&cell.h);
        self.c[at..][..self.hidden].copy_from_slice(&cell.c);
    }
}

/// One direction of one layer as plain arrays, stepped in its own order (left to right, or
/// right to left on the mirrored map).
struct Direction {
    hidden: usize,
    /// `(4h, 2h)` 1x1: the layer's input at the position.
    input_to_state: CachedConv,
    /// `(4h, 2h)` on `[h above; h beside]`: the reference's `2 x 1` kernel, taps side by side.
    state_to_state: CachedConv,
    /// Per row, the padding state just before the row's first pixel in this direction (None on
    /// row 0, whose first pixel is the scan's first step).
    edges: Vec<Option<Cell>>,
}

impl Direction {
    fn new(lstm: &DiagonalLstm, rows: usize) -> Result<Self> {
        let (gates, hidden, taps, _) = lstm.state_to_state.dims4()?;
        // (4h, h, 2, 1) -> (4h, 2h, 1, 1), tap 0 (the row above) first.
        let side_by_side = lstm
            .state_to_state
            .permute((0, 2, 1, 3))?
            .contiguous()?
            .reshape((gates, taps * hidden, 1, 1))?;
        let mut direction = Self {
            hidden,
            input_to_state: CachedConv::new(&lstm.input_to_state, false)?,
            state_to_state: CachedConv::from_parts(&side_by_side, None, false)?,
            edges: Vec::new(),
        };
        direction.edges = direction.padding_edges(rows);
        Ok(direction)
    }

    /// The reference's zero padding, stepped like any other position: in the skewed map,
    /// column `j` is padding in rows `r > j`, and row `r`'s first pixel (at column `r`) reads
    /// the padding state of column `r - 1` beside it.
    fn padding_edges(&self, rows: usize) -> Vec<Option<Cell>> {
        let zeros = vec![0f32; 2 * self.hidden];
        let mut work = Work::new(self.hidden);
        let mut edges = vec![None; rows];
        // The previous skewed column's padding states, by row (none before column 0).
        let mut column: Vec<Option<Cell>> = vec![None; rows];
        for j in 0..rows.saturating_sub(1) {
            let mut next = vec![None; rows];
            for r in j + 1..rows {
                let above = column[r - 1].as_ref().map(|s| s.h.as_slice());
                let beside = column[r].as_ref().map(|s| (s.h.as_slice(), s.c.as_slice()));
                self.step(&zeros, above, beside, &mut work);
                next[r] = Some(work.cell.clone());
            }
            edges[j + 1] = next[j + 1].clone();
            column = next;
        }
        edges
    }

    /// The padding state beside row `r`'s first pixel.
    fn edge(&self, r: usize) -> Option<(&[f32], &[f32])> {
        self.edges[r]
            .as_ref()
            .map(|s| (s.h.as_slice(), s.c.as_slice()))
    }

    /// Steps to `(r, c)` of `states` from the input `x` there, the state above and the one at
    /// column `beside` of the same row (None: the padding edge), and stores the new state.
    fn advance(
        &self,
        states: &mut States,
        x: &[f32],
        (r, c): (usize, usize),
        beside: Option<usize>,
        work: &mut Work,
    ) {
        let above = (r > 0).then(|| states.h((r - 1, c)));
        let beside = match beside {
            Some(b) => Some(states.at((r, b))),
            None => self.edge(r),
        };
        self.step(x, above, beside, work);
        states.set((r, c), &work.cell);
    }

    /// One LSTM step into `work.cell`. `above` is None on row 0 (the reference's zero row);
    /// `beside` is None only at the scan's first step, where the reference adds no
    /// state-to-state term and starts the cell from zero.
    fn step(
        &self,
        x: &[f32],
        above: Option<&[f32]>,
        beside: Option<(&[f32], &[f32])>,
        work: &mut Work,
    ) {
        let h = self.hidden;
        let Work {
            gates,
            recurrent,
            previous,
            cell,
        } = work;
        self.input_to_state
            .at_channels_last(x, gates, (1, 1), (0, 0));
        let c_prev = beside.map(|(h_beside, c_beside)| {
            match above {
                Some(a) => previous[..h].copy_from_slice(a),
                None => previous[..h].fill(0.0),
            }
            previous[h..].copy_from_slice(h_beside);
            self.state_to_state
                .at_channels_last(previous, recurrent, (1, 1), (0, 0));
            for (g, r) in gates.iter_mut().zip(recurrent.iter()) {
                *g += r;
            }
            c_beside
        });
        lstm_update(gates, c_prev, cell);
    }
}

/// Eq. (3) from the pre-activations `[o, f, i, g]`, with the activations `lstm_scan` uses:
/// `c = f c_prev + i g`, `h = o tanh(c)`.
fn lstm_update(gates: &mut [f32], c_prev: Option<&[f32]>, cell: &mut Cell) {
    let h = cell.h.len();
    let (ofi, g) = gates.split_at_mut(3 * h);
    simd::sigmoid_in_place(ofi);
    simd::tanh_in_place(g);
    let (o, fi) = ofi.split_at(h);
    let (f, i) = fi.split_at(h);
    for u in 0..h {
        cell.c[u] = f[u] * c_prev.map_or(0.0, |c| c[u]) + i[u] * g[u];
    }
    cell.h.copy_from_slice(&cell.c);
    simd::tanh_in_place(&mut cell.h);
    for (h, &o) in cell.h.iter_mut().zip(o) {
        *h *= o;
    }
}

struct Layer {
    left: Direction,
    right: Direction,
    residual: CachedConv,
}

/// One image being drawn.
struct Canvas {
    /// `(H, W, C)`.
    pixels: Vec<f32>,
    /// `(H, W, 2h)` each: the first convolution's output, then each layer's output.
    acts: Vec<Vec<f32>>,
    left: Vec<States>,
    right: Vec<States>,
    work: Work,
    /// At one position: `L + R` shifted, its residual, the head's input, hidden layer, logits.
    sum: Vec<f32>,
    residual: Vec<f32>,
    relu: Vec<f32>,
    head_hidden: Vec<f32>,
    logits: Vec<f32>,
}

/// The model's weights as plain arrays.
pub(super) struct Sampler {
    shape: [usize; 3],
    hidden: usize,
    output: Output,
    input_conv: CachedConv,
    layers: Vec<Layer>,
    head: [CachedConv; 2],
}

impl Sampler {
    pub(super) fn new(model: &DiagonalBiLstm) -> Result<Self> {
        let shape = model.image_shape();
        let layers = model
            .layers
            .iter()
            .map(|(layer, residual)| {
                Ok(Layer {
                    left: Direction::new(&layer.left, shape[1])?,
                    right: Direction::new(&layer.right, shape[1])?,
                    residual: CachedConv::new(residual, false)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            shape,
            hidden: model.cfg.hidden,
            output: model.cfg.output,
            input_conv: CachedConv::new(&model.input_conv, false)?,
            layers,
            head: model.head.cached()?,
        })
    }

    /// One image `(c, h, w)` from its uniforms `(c, h, w)`.
    fn sample_one(&self, uniforms: &[f32]) -> Vec<f32> {
        let [_, rows, width] = self.shape;
        let mut canvas = self.canvas();
        for r in 0..rows {
            for c in 0..width {
                self.draw_pixel(&mut canvas, (r, c), uniforms);
            }
            self.finish_row(&mut canvas, r);
        }
        self.planar(&canvas)
    }

    fn canvas(&self) -> Canvas {
        let [channels, rows, width] = self.shape;
        let (h, plane) = (self.hidden, rows * width);
        let states = || {
            (0..self.layers.len())
                .map(|_| States::new([rows, width], h))
                .collect()
        };
        Canvas {
            pixels: vec![0.0; plane * channels],
            acts: vec![vec![0.0; plane * 2 * h]; self.layers.len() + 1],
            left: states(),
            right: states(),
            work: Work::new(h),
            sum: vec![0.0; h],
            residual: vec![0.0; 2 * h],
            relu: vec![0.0; 2 * h],
            head_hidden: vec![0.0; self.head[0].out_channels()],
            logits: vec![0.0; self.head[1].out_channels()],
        }
    }

    /// Draws every channel of pixel `(r, c)`. A channel's draw changes what the next channel's
    /// logits see (the colour masks), so the values at `(r, c)` are recomputed per channel;
    /// nothing else has read them yet.
    fn draw_pixel(&self, canvas: &mut Canvas, (r, c): (usize, usize), uniforms: &[f32]) {
        let [channels, rows, width] = self.shape;
        let levels = self.output.levels();
        for ch in 0..channels {
            self.input_conv.at_channels_last(
                &canvas.pixels,
                &mut canvas.acts[0],
                (rows, width),
                (r, c),
            );
            for l in 0..self.layers.len() {
                self.layer_at(canvas, l, (r, c));
            }
            let u = uniforms[(ch * rows + r) * width + c];
            let logits = self.head_at(canvas, (r, c));
            let value = self.output.draw(&logits[ch * levels..][..levels], u);
            canvas.pixels[(r * width + c) * channels + ch] = value;
        }
    }

    /// Layer `l` at `(r, c)`: its left-to-right state there, then its output
    /// `x + residual(L(r, c) + R(r - 1, c))`, the next layer's input.
    fn layer_at(&self, canvas: &mut Canvas, l: usize, (r, c): (usize, usize)) {
        let (layer, h2) = (&self.layers[l], 2 * self.hidden);
        let at = (r * self.shape[2] + c) * h2;
        let (inputs, outputs) = canvas.acts.split_at_mut(l + 1);
        let x = &inputs[l][at..][..h2];
        let beside = c.checked_sub(1);
        let left = &mut canvas.left[l];
        layer
            .left
            .advance(left, x, (r, c), beside, &mut canvas.work);
        canvas.sum.copy_from_slice(left.h((r, c)));
        if r > 0 {
            let shifted = canvas.right[l].h((r - 1, c));
            for (s, v) in canvas.sum.iter_mut().zip(shifted) {
                *s += v;
            }
        }
        let residual = &mut canvas.residual;
        layer
            .residual
            .at_channels_last(&canvas.sum, residual, (1, 1), (0, 0));
        let out = &mut outputs[0][at..][..h2];
        for ((o, xi), ri) in out.iter_mut().zip(x).zip(residual.iter()) {
            *o = xi + ri;
        }
    }

    /// The head at `(r, c)`: ReLU, the 1x1 ReLU layer, the logits `(c * levels)`.
    fn head_at<'a>(&self, canvas: &'a mut Canvas, (r, c): (usize, usize)) -> &'a [f32] {
        let h2 = 2 * self.hidden;
        let last = canvas.acts.last().expect("the first convolution's output");
        let at = (r * self.shape[2] + c) * h2;
        for (dst, v) in canvas.relu.iter_mut().zip(&last[at..][..h2]) {
            *dst = v.max(0.0);
        }
        let [head0, head1] = &self.head;
        head0.at_channels_last(&canvas.relu, &mut canvas.head_hidden, (1, 1), (0, 0));
        head1.at_channels_last(&canvas.head_hidden, &mut canvas.logits, (1, 1), (0, 0));
        &canvas.logits
    }

    /// Row `r`'s right-to-left states, computed once the whole row is drawn: `R(r, c)` reads
    /// the layer's inputs at `(r, c..W)`, final only now. The last row's are never read.
    fn finish_row(&self, canvas: &mut Canvas, r: usize) {
        let [_, rows, width] = self.shape;
        if r + 1 == rows {
            return;
        }
        let h2 = 2 * self.hidden;
        for (l, layer) in self.layers.iter().enumerate() {
            for c in (0..width).rev() {
                let x = &canvas.acts[l][(r * width + c) * h2..][..h2];
                let beside = (c + 1 < width).then_some(c + 1);
                let right = &mut canvas.right[l];
                layer
                    .right
                    .advance(right, x, (r, c), beside, &mut canvas.work);
            }
        }
    }

    /// The drawn image `(H, W, C)` as `(C, H, W)`.
    fn planar(&self, canvas: &Canvas) -> Vec<f32> {
        let [channels, rows, width] = self.shape;
        (0..channels)
            .flat_map(|ch| (0..rows * width).map(move |p| (ch, p)))
            .map(|(ch, p)| canvas.pixels[p * channels + ch])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ar::{naive_sample, Output};
    use crate::diagonal_bilstm::tests::sharp;
    use layers::Rng;

    /// Draws like [`Sampler::sample_one`] but sweeps each row's right-to-left states before the
    /// row is drawn, from layer inputs that are not final yet.
    fn sample_premature(sampler: &Sampler, uniforms: &[f32]) -> Vec<f32> {
        let [_, rows, width] = sampler.shape;
        let mut canvas = sampler.canvas();
        for r in 0..rows {
            sampler.finish_row(&mut canvas, r);
            for c in 0..width {
                sampler.draw_pixel(&mut canvas, (r, c), uniforms);
            }
        }
        sampler.planar(&canvas)
    }

    /// How many of the pixels `draw` gives differ from the reference loop's, for 4 images of
    /// the binary three-layer model of `the_cached_sampler_equals_the_reference_loop`.
    fn differing(draw: impl Fn(&Sampler, &[f32]) -> Vec<f32>, zero_edges: bool) -> Result<usize> {
        let model = sharp(1, 3, Output::Bernoulli)?;
        let mut sampler = Sampler::new(&model)?;
        if zero_edges {
            let directions = sampler
                .layers
                .iter_mut()
                .flat_map(|l| [&mut l.left, &mut l.right]);
            for edge in directions.flat_map(|d| d.edges.iter_mut().flatten()) {
                *edge = Cell::zeros(edge.h.len());
            }
        }
        let (n, dims) = (4, model.image_shape().iter().product::<usize>());
        let u = Rng::new(9).uniform_vec(n * dims);
        let drawn: Vec<f32> = (0..n)
            .flat_map(|k| draw(&sampler, &u[k * dims..][..dims]))
            .collect();
        let reference = naive_sample(&model, &u, n)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(drawn.iter().zip(&reference).filter(|(a, b)| a != b).count())
    }

    /// Negative controls for `the_cached_sampler_equals_the_reference_loop`: its binary model
    /// must tell the reference loop from a sampler that sweeps each row's right-to-left states
    /// before the row is drawn, and from one that takes the padding's states for zero.
    #[test]
    fn the_equality_check_catches_early_right_to_left_states_and_zero_padding_states() -> Result<()>
    {
        assert_eq!(differing(Sampler::sample_one, false)?, 0);
        assert!(
            differing(sample_premature, false)? > 0,
            "early sweep unnoticed"
        );
        assert!(
            differing(Sampler::sample_one, true)? > 0,
            "zero padding unnoticed"
        );
        Ok(())
    }
}
