//! 2-D convolution on the CPU through gemm, forward and both gradients.
//!
//! Candle 0.11's CPU convolution runs its input gradient as a direct transposed-convolution loop
//! and spends most of a PixelCNN step outside gemm (CANDLE_NOTES.md). Here every pass is one
//! matrix product per image over an im2col buffer (Chellapilla et al. 2006):
//!
//! - forward: `y_b = W (O, C*kh*kw) @ cols(x_b) (C*kh*kw, Ho*Wo)`
//! - input gradient: `dx_b = col2im(W^T @ dy_b)`
//! - weight gradient: `dW = sum_b dy_b @ cols(x_b)^T` (for narrow layers as dot products along
//!   the pixels, not gemm: [`Element::add_a_bt`])
//!
//! Small output maps put several images side by side in one product ([`group_size`]). Groups
//! are spread over threads (Rayon); fewer groups than threads hand the threads to gemm. Per-axis strides and paddings allow the k x 1 kernels of the
//! PixelRNNs. Each pass's gradients are passes again, so gradients of any order (WGAN-GP)
//! stay here; [`conv_transpose2d`] is the input-gradient pass. Other devices and dtypes fall
//! back to Candle's ops.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;

use crate::backprop::gradient_wanted;
use crate::kernels::activation::{
    backward_fused, bias_activate_in_place, bias_activation, Activation,
};
use crate::kernels::ops::{cpu_slice, fused_cpu_f32};
use crate::kernels::precision;
use crate::kernels::reduce;
use crate::kernels::simd;
use rayon::prelude::*;

/// Stride and zero padding per axis `(vertical, horizontal)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

impl Default for ConvSpec {
    fn default() -> Self {
        Self {
            stride: (1, 1),
            padding: (0, 0),
        }
    }
}

impl ConvSpec {
    pub fn same_padding(kh: usize, kw: usize) -> Self {
        Self {
            stride: (1, 1),
            padding: (kh / 2, kw / 2),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Geometry {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    spec: ConvSpec,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn new(x: &[usize], k: &[usize], spec: ConvSpec) -> Result<Self> {
        let (&[b, c, h, w], &[o, ck, kh, kw]) = (x, k) else {
            candle_core::bail!(
                "conv2d: expected x (b, c, h, w) and kernel (o, c, kh, kw), got {x:?} and {k:?}"
            );
        };
        if c != ck {
            candle_core::bail!("conv2d: input has {c} channels, kernel expects {ck}");
        }
        let (sh, sw) = spec.stride;
        let (ph, pw) = spec.padding;
        if sh == 0 || sw == 0 || h + 2 * ph < kh || w + 2 * pw < kw {
            candle_core::bail!(
                "conv2d: kernel {kh}x{kw} does not fit input {h}x{w} with padding {ph},{pw}"
            );
        }
        Ok(Self {
            b,
            c,
            h,
            w,
            o,
            kh,
            kw,
            spec,
            ho: (h + 2 * ph - kh) / sh + 1,
            wo: (w + 2 * pw - kw) / sw + 1,
        })
    }

    fn ckk(&self) -> usize {
        self.c * self.kh * self.kw
    }

    fn hw_out(&self) -> usize {
        self.ho * self.wo
    }

    fn image(&self) -> usize {
        self.c * self.h * self.w
    }

    /// For kernel offset `k` along an axis, the output positions whose input index is inside
    /// the image, and the input index of the first: `(first_out, end_out, first_in)`.
    fn valid_range(out: usize, len: usize, stride: usize, pad: usize, k: usize) -> (usize, usize) {
        // in = o * stride + k - pad must be in [0, len).
        let first = (pad.saturating_sub(k)).div_ceil(stride);
        let end = if len + pad > k {
            ((len + pad - k - 1) / stride + 1).min(out)
        } else {
            0
        };
        (first.min(end), end)
    }
}

/// The most output channels whose weight gradient [`simd::add_a_bt`] computes (else gemm):
/// the run file's Progressive GAN (depths 64, 64, 32, 16) trained its 32 x 32 stage at 43
/// images/s on one thread with gemm for all, 50 with this cut at 16, 57 at 32, 59 with none.
const DOTS_MAX_ROWS: usize = 32;

pub(crate) trait Element:
    Copy + Send + Sync + Default + std::ops::AddAssign + 'static
{
    const ONE: Self;

    /// This thread's reusable [`Scratch`] of this element type: see [`with_scratch`].
    fn scratch_cell() -> &'static std::thread::LocalKey<RefCell<Scratch<Self>>>;

    /// `out (m, n) += a (m, k) @ b (n, k)^T`, the rows of `a` and `b` `lda` and `ldb` apart:
    /// the weight gradient's product, both operands along the pixels.
    #[allow(clippy::too_many_arguments)]
    fn add_a_bt(
        out: &mut [Self],
        a: &[Self],
        lda: usize,
        b: &[Self],
        ldb: usize,
        dims: (usize, usize, usize),
        par: Parallelism,
    ) {
        add_a_bt_by_gemm(out, a, lda, b, ldb, dims, par);
    }
}

/// [`Element::add_a_bt`] as one gemm product, `b` read transposed through its strides.
#[allow(clippy::too_many_arguments)]
fn add_a_bt_by_gemm<T: Element>(
    out: &mut [T],
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    dims: (usize, usize, usize),
    par: Parallelism,
) {
    matmul(dims, out, true, a, (lda, 1), b, (1, ldb), par);
}

impl Element for f32 {
    const ONE: Self = 1.0;

    fn scratch_cell() -> &'static std::thread::LocalKey<RefCell<Scratch<Self>>> {
        &SCRATCH_F32
    }

    /// For a narrow layer (`m`, its output channels, at most [`DOTS_MAX_ROWS`]) not gemm:
    /// gemm first copies the larger operand transposed, element by element, and with few
    /// output channels that copy outweighs the product. One thread, this project's CPU
    /// (AMD EPYC, AVX-512), the product alone: (16, 144, 1024), a 16-channel 3 x 3 layer at
    /// 32 x 32, gemm 10 GFLOP/s against [`simd::add_a_bt`]'s 89; (32, 288, 1024) 20 against
    /// 95; (64, 576, 256) 67 against 71; (128, 1152, 256) 81 against 66. Inside whole passes
    /// the wider layers ran slower this way (PixelCNN's 64-channel layer: forward and both
    /// gradients 72 ms by gemm, 84 by the dot products), hence the cut at 32 channels.
    fn add_a_bt(
        out: &mut [f32],
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        dims: (usize, usize, usize),
        par: Parallelism,
    ) {
        if dims.0 <= DOTS_MAX_ROWS {
            simd::add_a_bt(out, a, lda, b, ldb, dims);
        } else {
            add_a_bt_by_gemm(out, a, lda, b, ldb, dims, par);
        }
    }
}
impl Element for f64 {
    const ONE: Self = 1.0;

    fn scratch_cell() -> &'static std::thread::LocalKey<RefCell<Scratch<Self>>> {
        &SCRATCH_F64
    }
}

/// `cols (C*kh*kw, images * Ho*Wo)` of a group of images `xs (images, C, H, W)`, its rows `ld`
/// long: image `j`'s columns at `j * Ho*Wo`. Each row of `cols` is written whole, image after
/// image: walking one image's columns down all rows instead, `ld` apart, missed the cache on
/// every row.
fn im2col<T: Element>(xs: &[T], g: &Geometry, cols: &mut [T], ld: usize) {
    let (sh, sw) = g.spec.stride;
    let (ph, pw) = g.spec.padding;
    let n = g.hw_out();
    if n == 0 || g.image() == 0 {
        return;
    }
    // Stride 1 and an output as wide as the input ("same" padding): one kernel offset's
    // window rows follow each other in the image as in the output.
    let rows_as_one_block = (sh, sw) == (1, 1) && g.wo == g.w;
    for ci in 0..g.c {
        for ky in 0..g.kh {
            let (y0, y1) = Geometry::valid_range(g.ho, g.h, sh, ph, ky);
            for kx in 0..g.kw {
                let (x0, x1) = Geometry::valid_range(g.wo, g.w, sw, pw, kx);
                let row = &mut cols[((ci * g.kh + ky) * g.kw + kx) * ld..][..ld];
                for (x, row) in xs.chunks_exact(g.image()).zip(row.chunks_exact_mut(n)) {
                    // Zeros only where the window reads padding: the rest is written below.
                    row[..y0 * g.wo].fill(T::default());
                    row[y1.max(y0) * g.wo..].fill(T::default());
                    if rows_as_one_block && y1 > y0 && x1 > x0 {
                        copy_as_one_block(x, g, (ci, ky, kx), (y0, y1), (x0, x1), row);
                        continue;
                    }
                    for oy in y0..y1 {
                        let iy = oy * sh + ky - ph;
                        let src = &x[(ci * g.h + iy) * g.w..][..g.w];
                        let dst = &mut row[oy * g.wo..][..g.wo];
                        dst[..x0].fill(T::default());
                        dst[x1.max(x0)..].fill(T::default());
                        if sw == 1 {
                            let ix0 = x0 + kx - pw;
                            dst[x0..x1].copy_from_slice(&src[ix0..ix0 + (x1 - x0)]);
                        } else {
                            for ox in x0..x1 {
                                dst[ox] = src[ox * sw + kx - pw];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col`]'s output rows `y0..y1`, columns `x0..x1`, of one kernel offset at stride 1 with
/// an output as wide as the input: one copy from the first row's first value to the last
/// row's last, then zeros over the columns outside `x0..x1` that it filled from the
/// neighbouring rows. Row by row, PixelCNN's 28-value rows were a `memmove` call each (7% of
/// its step on one thread with the gather around them).
fn copy_as_one_block<T: Element>(
    x: &[T],
    g: &Geometry,
    (ci, ky, kx): (usize, usize, usize),
    (y0, y1): (usize, usize),
    (x0, x1): (usize, usize),
    row: &mut [T],
) {
    let (ph, pw) = g.spec.padding;
    let w = g.w;
    let src = (ci * g.h + y0 + ky - ph) * w + x0 + kx - pw;
    let len = (y1 - y0 - 1) * w + (x1 - x0);
    row[y0 * w + x0..][..len].copy_from_slice(&x[src..][..len]);
    for oy in y0..y1 {
        let dst = &mut row[oy * w..][..w];
        dst[..x0].fill(T::default());
        dst[x1..].fill(T::default());
    }
}

/// Adds `cols (C*kh*kw, images * Ho*Wo)` (rows `ld` long, image `j`'s columns at `j * Ho*Wo`)
/// back onto the images `xs (images, C, H, W)` they would have been cut from, reading each row
/// of `cols` whole (see [`im2col`]).
fn col2im<T: Element>(cols: &[T], g: &Geometry, xs: &mut [T], ld: usize) {
    let (sh, sw) = g.spec.stride;
    let (ph, pw) = g.spec.padding;
    let (n, image) = (g.hw_out(), g.image());
    if n == 0 || image == 0 {
        return;
    }
    for ci in 0..g.c {
        for ky in 0..g.kh {
            let (y0, y1) = Geometry::valid_range(g.ho, g.h, sh, ph, ky);
            for kx in 0..g.kw {
                let (x0, x1) = Geometry::valid_range(g.wo, g.w, sw, pw, kx);
                let row = &cols[((ci * g.kh + ky) * g.kw + kx) * ld..][..ld];
                for (x, row) in xs.chunks_exact_mut(image).zip(row.chunks_exact(n)) {
                    for oy in y0..y1 {
                        let iy = oy * sh + ky - ph;
                        let dst = &mut x[(ci * g.h + iy) * g.w..][..g.w];
                        let src = &row[oy * g.wo..][..g.wo];
                        if sw == 1 {
                            // Slices of equal length: no index checks, so the adds vectorize.
                            let ix0 = x0 + kx - pw;
                            let dst = &mut dst[ix0..ix0 + (x1 - x0)];
                            for (d, &v) in dst.iter_mut().zip(&src[x0..x1]) {
                                *d += v;
                            }
                        } else {
                            for ox in x0..x1 {
                                dst[ox * sw + kx - pw] += src[ox];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dst (m, n) (+)= lhs (m, k) @ rhs (k, n)`, `dst` row-major, `lhs` and `rhs` given by their
/// row and column strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Element>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    lhs: &[T],
    lhs_strides: (usize, usize),
    rhs: &[T],
    rhs_strides: (usize, usize),
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::default());
        }
        return;
    }
    assert!(dst.len() >= m * n);
    assert!(lhs.len() > (m - 1) * lhs_strides.0 + (k - 1) * lhs_strides.1);
    assert!(rhs.len() > (k - 1) * rhs_strides.0 + (n - 1) * rhs_strides.1);
    // gemm's micro-kernels hold a block of rows in vector registers and pick a narrower one
    // for short outputs: a 16-row product ran 1/16 of its lanes on the wide kernel's
    // schedule. Give gemm the taller of `dst` and `dst^T = rhs^T lhs^T`.
    let (gm, gn, dst_strides, a, a_strides, b, b_strides) = if m >= n {
        (m, n, (n, 1), lhs, lhs_strides, rhs, rhs_strides)
    } else {
        let swap = |(r, c): (usize, usize)| (c, r);
        (n, m, (1, n), rhs, swap(rhs_strides), lhs, swap(lhs_strides))
    };
    // SAFETY: the asserts above keep every index gemm reads or writes inside the slices.
    unsafe {
        gemm::gemm(
            gm,
            gn,
            k,
            dst.as_mut_ptr(),
            dst_strides.1 as isize,
            dst_strides.0 as isize,
            accumulate,
            a.as_ptr(),
            a_strides.1 as isize,
            a_strides.0 as isize,
            b.as_ptr(),
            b_strides.1 as isize,
            b_strides.0 as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Images per matrix product. gemm runs its micro-kernel along the output positions, so a
/// small output map (DCGAN's 4 x 4 and 1 x 1 layers: 16 and 1 positions) gave per-image
/// products too narrow for it; several images side by side make it at least `MIN_COLUMNS`
/// wide, within `COLS_BUDGET` values of im2col buffer.
fn group_size(g: &Geometry) -> usize {
    const MIN_COLUMNS: usize = 256;
    const COLS_BUDGET: usize = 1 << 21;
    let n = g.hw_out().max(1);
    let wanted = MIN_COLUMNS.div_ceil(n);
    let fits = (COLS_BUDGET / (g.ckk() * n).max(1)).max(1);
    wanted.min(fits).clamp(1, g.b.max(1))
}

/// Whether to spread groups of images over threads (else: give the threads to gemm).
fn per_group_threads(groups: usize) -> bool {
    groups >= rayon::current_num_threads()
}

fn gemm_threads(groups: usize) -> Parallelism {
    if per_group_threads(groups) {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// Reusable buffers of one thread (see [`with_scratch`]). Each pass writes every value of the
/// part it uses before reading it, so a buffer only grows and is never cleared: per-image
/// `vec![0; ..]` buffers cost a PixelCNN step a fifth of its time in zeroing and fresh pages.
/// Each thread that has run a pass keeps them for the life of the process, each the size of
/// the largest group matrix it has met: at most [`group_size`]'s budget of 2M values (8 MB
/// in f32), or one image's matrix where that alone is larger.
pub(crate) struct Scratch<T> {
    cols: Vec<T>,
    wide: Vec<T>,
}

impl<T: Element> Scratch<T> {
    const fn new() -> Self {
        Self {
            cols: Vec::new(),
            wide: Vec::new(),
        }
    }
}

thread_local! {
    static SCRATCH_F32: RefCell<Scratch<f32>> = const { RefCell::new(Scratch::new()) };
    static SCRATCH_F64: RefCell<Scratch<f64>> = const { RefCell::new(Scratch::new()) };
}

/// Runs `f` with this thread's scratch, kept from call to call: a fresh one per pass (or per
/// part of a weight gradient) zero-filled a column matrix of up to 8 MB each time, memory
/// traffic that two threads share (dcgan on two threads: 191.5 -> 197.2 images/s, alternating,
/// 2 each). A thread already in a pass (waiting inside gemm, it may run another group's job)
/// gets a fresh scratch.
fn with_scratch<T: Element, R>(f: impl FnOnce(&mut Scratch<T>) -> R) -> R {
    T::scratch_cell().with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut Scratch::new()),
    })
}

/// `len` zeros, written by all threads: a serial `vec![0; len]` of a layer's output or input
/// gradient left the other threads idle.
fn par_zeros<T: Element>(len: usize) -> Vec<T> {
    const CHUNK: usize = 1 << 15;
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(CHUNK)
        .for_each(|chunk| {
            for x in chunk {
                x.write(T::default());
            }
        });
    // SAFETY: the loop above initialised all `len` values.
    unsafe { v.set_len(len) };
    v
}

/// The first `len` values of `buf`, growing it if needed; their contents are stale.
fn stale<T: Element>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    &mut buf[..len]
}

/// `(images, rows, n)` -> `(rows, images, n)`: a group's per-image maps side by side.
fn interleave<T: Element>(src: &[T], images: usize, rows: usize, n: usize, dst: &mut [T]) {
    for j in 0..images {
        for r in 0..rows {
            dst[(r * images + j) * n..][..n].copy_from_slice(&src[(j * rows + r) * n..][..n]);
        }
    }
}

/// The inverse of [`interleave`].
fn deinterleave<T: Element>(src: &[T], images: usize, rows: usize, n: usize, dst: &mut [T]) {
    for j in 0..images {
        for r in 0..rows {
            dst[(j * rows + r) * n..][..n].copy_from_slice(&src[(r * images + j) * n..][..n]);
        }
    }
}

/// A group's `(images, rows, n)` maps as one `(rows, images * n)` matrix: the maps themselves
/// for one image, else interleaved into `buf`.
fn side_by_side<'a, T: Element>(
    src: &'a [T],
    images: usize,
    rows: usize,
    n: usize,
    buf: &'a mut Vec<T>,
) -> &'a [T] {
    if images == 1 {
        return src;
    }
    let wide = stale(buf, src.len());
    interleave(src, images, rows, n, wide);
    wide
}

/// im2col of a group of images into `buf`: `(C*kh*kw, images * Ho*Wo)` and its row length.
fn group_cols<'a, T: Element>(xs: &[T], g: &Geometry, buf: &'a mut Vec<T>) -> (&'a [T], usize) {
    let (n, images) = (g.hw_out(), xs.len() / g.image());
    let ld = images * n;
    let cols = stale(buf, g.ckk() * ld);
    im2col(xs, g, cols, ld);
    (cols, ld)
}

/// Runs `one(output chunk, input chunk, gemm threads, scratch)` per group of images, groups
/// over threads (one scratch per worker) or the threads given to gemm.
fn over_groups<T: Element>(
    out: &mut [T],
    out_per_image: usize,
    input: &[T],
    in_per_image: usize,
    g: &Geometry,
    one: impl Fn(&mut [T], &[T], Parallelism, &mut Scratch<T>) + Sync + Send,
) {
    let gs = group_size(g);
    let groups = g.b.div_ceil(gs);
    let par = gemm_threads(groups);
    let (out_chunk, in_chunk) = (gs * out_per_image, gs * in_per_image);
    if per_group_threads(groups) {
        out.par_chunks_mut(out_chunk)
            .zip(input.par_chunks(in_chunk))
            .for_each(|(o, i)| with_scratch(|scratch| one(o, i, par, scratch)));
    } else {
        with_scratch(|scratch| {
            out.chunks_mut(out_chunk)
                .zip(input.chunks(in_chunk))
                .for_each(|(o, i)| one(o, i, par, scratch))
        });
    }
}

fn forward<T: Element>(x: &[T], k: &[T], g: &Geometry) -> Vec<T> {
    let (n, ckk) = (g.hw_out(), g.ckk());
    let mut y = par_zeros(g.b * g.o * n);
    over_groups(&mut y, g.o * n, x, g.image(), g, |yg, xg, par, scratch| {
        let (cols, ld) = group_cols(xg, g, &mut scratch.cols);
        let images = ld / n.max(1);
        if images == 1 {
            matmul((g.o, n, ckk), yg, false, k, (ckk, 1), cols, (n, 1), par);
        } else {
            let wide = stale(&mut scratch.wide, g.o * ld);
            matmul((g.o, ld, ckk), wide, false, k, (ckk, 1), cols, (ld, 1), par);
            deinterleave(wide, images, g.o, n, yg);
        }
    });
    y
}

fn input_grad<T: Element>(dy: &[T], k: &[T], g: &Geometry) -> Vec<T> {
    let (n, ckk) = (g.hw_out(), g.ckk());
    let mut dx = par_zeros(g.b * g.image());
    over_groups(
        &mut dx,
        g.image(),
        dy,
        g.o * n,
        g,
        |dxg, dyg, par, scratch| {
            let images = dxg.len() / g.image();
            let ld = images * n;
            let dy_wide = side_by_side(dyg, images, g.o, n, &mut scratch.wide); // (O, images * n)
            let cols = stale(&mut scratch.cols, ckk * ld);
            // W^T: element (r, o) of the (ckk, O) matrix is k[o * ckk + r].
            matmul(
                (ckk, ld, g.o),
                cols,
                false,
                k,
                (1, ckk),
                dy_wide,
                (ld, 1),
                par,
            );
            col2im(cols, g, dxg, ld);
        },
    );
    dx
}

fn weight_grad<T: Element>(x: &[T], dy: &[T], g: &Geometry) -> Vec<T> {
    let (n, ckk) = (g.hw_out(), g.ckk());
    let size = g.o * ckk;
    let gs = group_size(g);
    let groups = g.b.div_ceil(gs);
    // dW += dy_wide (O, ld) @ cols^T (ld, ckk) over the groups in `range`.
    let accumulate = |par: Parallelism, range: std::ops::Range<usize>| {
        let mut dw = vec![T::default(); size];
        with_scratch(|scratch| {
            for group in range {
                let images = group * gs..((group + 1) * gs).min(g.b);
                let count = images.len();
                let xs = &x[images.start * g.image()..images.end * g.image()];
                let (cols, ld) = group_cols(xs, g, &mut scratch.cols);
                let dys = &dy[images.start * g.o * n..images.end * g.o * n];
                let dy_wide = side_by_side(dys, count, g.o, n, &mut scratch.wide);
                T::add_a_bt(&mut dw, dy_wide, ld, cols, ld, (g.o, ckk, ld), par);
            }
        });
        dw
    };
    // Groups split into parts by their count alone, each part summed on its own and the parts
    // added in order: the same bits on any number of threads.
    let per_part = reduce::items_per_part(groups);
    let parts = groups.div_ceil(per_part);
    let par = gemm_threads(parts);
    reduce::sum_parts_in_order((0..parts).collect(), size, |p| {
        accumulate(par, p * per_part..((p + 1) * per_part).min(groups))
    })
}

/// Which pass a [`ConvPass`] computes; its two inputs are:
/// `Forward (x, kernel)`, `InputGrad (dy, kernel)`, `WeightGrad (x, dy)`.
#[derive(Debug, Clone, Copy)]
enum Pass {
    Forward,
    InputGrad,
    WeightGrad,
}

struct ConvPass {
    pass: Pass,
    /// `(b, c, h, w)` of x and `(o, c, kh, kw)` of the kernel.
    x_dims: [usize; 4],
    k_dims: [usize; 4],
    spec: ConvSpec,
    /// A factor on the output: `s F`, `s I` and `s W` are as bilinear as `F`, `I` and `W`, and
    /// each other's gradients with the same `s` (see [`conv2d_scaled`]).
    scale: f64,
}

impl ConvPass {
    fn run<T: Element + candle_core::WithDType>(
        &self,
        a: &[T],
        b: &[T],
    ) -> Result<(Vec<T>, Shape)> {
        let g = Geometry::new(&self.x_dims, &self.k_dims, self.spec)?;
        let (mut out, shape) = match self.pass {
            Pass::Forward => (forward(a, b, &g), Shape::from((g.b, g.o, g.ho, g.wo))),
            Pass::InputGrad => (input_grad(a, b, &g), Shape::from(self.x_dims.to_vec())),
            Pass::WeightGrad => (weight_grad(a, b, &g), Shape::from(self.k_dims.to_vec())),
        };
        if self.scale != 1.0 {
            let scale = T::from_f64(self.scale);
            out.par_chunks_mut(1 << 14)
                .for_each(|chunk| chunk.iter_mut().for_each(|v| *v *= scale));
        }
        Ok((out, shape))
    }
}

impl CustomOp2 for ConvPass {
    fn name(&self) -> &'static str {
        match self.pass {
            Pass::Forward => "genzoo-conv2d",
            Pass::InputGrad => "genzoo-conv2d-input-grad",
            Pass::WeightGrad => "genzoo-conv2d-weight-grad",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (v, s) = self.run::<f32>(
                    cpu_slice(s1, l1, "conv2d input")?,
                    cpu_slice(s2, l2, "conv2d input")?,
                )?;
                Ok((CpuStorage::F32(v), s))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (v, s) = self.run::<f64>(
                    cpu_slice(s1, l1, "conv2d input")?,
                    cpu_slice(s2, l2, "conv2d input")?,
                )?;
                Ok((CpuStorage::F64(v), s))
            }
            _ => candle_core::bail!("{}: f32 or f64 inputs of one dtype", self.name()),
        }
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // With F the convolution, I its input gradient and W its weight gradient, all three
        // bilinear: <g, F(x, k)> = <x, I(g, k)> = <W(x, g), k>. Each pass's gradients are
        // passes again, so gradients of any order stay on this path (WGAN-GP on conv critics).
        let grad = grad.contiguous()?;
        // Only what the backward pass wants (`backprop::backward_for`): a discriminator's
        // weights in a generator step, or the data a first layer reads, need no gradient.
        let (want_a, want_b) = (gradient_wanted(a), gradient_wanted(b));
        let (da, db) = match self.pass {
            // y = F(x, k): dx = I(G, k), dk = W(x, G).
            Pass::Forward => (
                want_a.then(|| apply(Pass::InputGrad, &grad, b, self)),
                want_b.then(|| apply(Pass::WeightGrad, a, &grad, self)),
            ),
            // dx = I(g, k): dg = F(G, k), dk = W(G, g).
            Pass::InputGrad => (
                want_a.then(|| apply(Pass::Forward, &grad, b, self)),
                want_b.then(|| apply(Pass::WeightGrad, &grad, a, self)),
            ),
            // dk = W(x, g): dx = I(g, G), dg = F(x, G).
            Pass::WeightGrad => (
                want_a.then(|| apply(Pass::InputGrad, b, &grad, self)),
                want_b.then(|| apply(Pass::Forward, a, &grad, self)),
            ),
        };
        Ok((da.transpose()?, db.transpose()?))
    }
}

fn apply(pass: Pass, a: &Tensor, b: &Tensor, like: &ConvPass) -> Result<Tensor> {
    a.contiguous()?.apply_op2(
        &b.contiguous()?,
        ConvPass {
            pass,
            x_dims: like.x_dims,
            k_dims: like.k_dims,
            spec: like.spec,
            scale: like.scale,
        },
    )
}

/// Cross-correlation of `x (b, c, h, w)` with `kernel (o, c, kh, kw)`, no bias:
/// `(b, o, ho, wo)`. Differentiable; on the CPU in f32/f64 it runs through gemm.
pub fn conv2d(x: &Tensor, kernel: &Tensor, spec: ConvSpec) -> Result<Tensor> {
    conv2d_scaled(x, kernel, spec, 1.0)
}

/// `scale * conv2d(x, kernel)`, the factor applied inside the op: an equalized layer's
/// run-time scale (the Progressive GAN) without a scaled copy of its weight, which as the
/// output of an op would take every gradient pass (`backprop::backward_for` skips the weight
/// gradient of a variable nobody steps, not of a tensor computed from one).
pub fn conv2d_scaled(x: &Tensor, kernel: &Tensor, spec: ConvSpec, scale: f64) -> Result<Tensor> {
    if let Some([x, kernel]) = precision::lowered([x, kernel])? {
        return conv2d_scaled(&x, &kernel, spec, scale)?.to_dtype(DType::F32);
    }
    let fast = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.dtype() == kernel.dtype();
    if !fast {
        return scaled(candle_conv2d(x, kernel, spec)?, scale);
    }
    let x = x.contiguous()?;
    let kernel = kernel.contiguous()?;
    let (x_dims, k_dims) = (dims4(&x)?, dims4(&kernel)?);
    Geometry::new(&x_dims, &k_dims, spec)?;
    x.apply_op2(
        &kernel,
        ConvPass {
            pass: Pass::Forward,
            x_dims,
            k_dims,
            spec,
            scale,
        },
    )
}

/// `act(conv2d(x, kernel) + bias[c])` as one op on the CPU in f32 (first-order, outside a
/// `differentiable_twice` scope; elsewhere the two ops it fuses). Candle's backward pass gives
/// every node of the graph a zero-filled gradient and adds into it, on one thread: without the
/// convolution's output as a node of its own, each layer drops one of those passes over its
/// largest tensor (PixelCNN: nine 6 MB maps a step). The same values and gradients as
/// `bias_activation(&conv2d(x, kernel, spec)?, Some(bias), act)`.
pub fn conv2d_bias_activation(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    spec: ConvSpec,
    act: Activation,
) -> Result<Tensor> {
    conv2d_scaled_bias_activation(x, kernel, bias, spec, act, 1.0)
}

/// `act(scale * conv2d(x, kernel) + bias[c])`: [`conv2d_bias_activation`] with
/// [`conv2d_scaled`]'s factor (the Progressive GAN's equalized layers).
pub fn conv2d_scaled_bias_activation(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    spec: ConvSpec,
    act: Activation,
    scale: f64,
) -> Result<Tensor> {
    let fused = precision::compute_dtype() == DType::F32 && fused_cpu_f32(&[x, kernel, bias]);
    if !fused {
        return bias_activation(&conv2d_scaled(x, kernel, spec, scale)?, Some(bias), act);
    }
    let x = x.contiguous()?;
    let kernel = kernel.contiguous()?;
    let (x_dims, k_dims) = (dims4(&x)?, dims4(&kernel)?);
    let g = Geometry::new(&x_dims, &k_dims, spec)?;
    if bias.dims() != [g.o] {
        candle_core::bail!(
            "conv2d_bias_activation: bias {:?} for a kernel of {} output channels",
            bias.dims(),
            g.o
        );
    }
    let conv = ConvPass {
        pass: Pass::Forward,
        x_dims,
        k_dims,
        spec,
        scale,
    };
    x.apply_op3(
        &kernel,
        &bias.contiguous()?,
        ConvBiasActivation { conv, act },
    )
}

/// The op of [`conv2d_bias_activation`]: its forward pass is the convolution's, then the bias
/// and activation in place; its backward pass the activation's, then the convolution's.
struct ConvBiasActivation {
    conv: ConvPass,
    act: Activation,
}

impl CustomOp3 for ConvBiasActivation {
    fn name(&self) -> &'static str {
        "genzoo-conv2d-bias-activation"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice::<f32>(s1, l1, "conv2d input")?;
        let k = cpu_slice::<f32>(s2, l2, "conv2d kernel")?;
        let b = cpu_slice::<f32>(s3, l3, "conv2d bias")?;
        let (mut y, shape) = self.conv.run(x, k)?;
        let &[_, channels, ho, wo] = shape.dims() else {
            candle_core::bail!("{}: output {shape:?} is not (b, c, h, w)", self.name());
        };
        bias_activate_in_place(&mut y, Some(b), channels, ho * wo, self.act);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The gradient at the convolution's output, and the bias's, in one pass.
        let (dz, db) = backward_fused(self.act, y, grad, true)?;
        let dx = gradient_wanted(x)
            .then(|| apply(Pass::InputGrad, &dz, kernel, &self.conv))
            .transpose()?;
        let dk = gradient_wanted(kernel)
            .then(|| apply(Pass::WeightGrad, x, &dz, &self.conv))
            .transpose()?;
        Ok((dx, dk, db.filter(|_| gradient_wanted(bias))))
    }
}

/// `y * scale`, or `y` itself for 1.
fn scaled(y: Tensor, scale: f64) -> Result<Tensor> {
    if scale == 1.0 {
        Ok(y)
    } else {
        y * scale
    }
}

/// Transposed convolution (the adjoint of [`conv2d`]; PyTorch's `conv_transpose2d` without
/// output padding): `x (b, c_in, h, w)`, `kernel (c_in, c_out, kh, kw)` ->
/// `(b, c_out, (h - 1) s - 2p + kh, ..)`. On the CPU it is `conv2d`'s input-gradient pass
/// (gemm and col2im) with both gradients; elsewhere Candle's op.
pub fn conv_transpose2d(x: &Tensor, kernel: &Tensor, spec: ConvSpec) -> Result<Tensor> {
    transposed(x, kernel, spec, (0, 0), 1.0)
}

/// `scale * conv_transpose2d(x, kernel)`, as [`conv2d_scaled`].
pub fn conv_transpose2d_scaled(
    x: &Tensor,
    kernel: &Tensor,
    spec: ConvSpec,
    scale: f64,
) -> Result<Tensor> {
    transposed(x, kernel, spec, (0, 0), scale)
}

/// [`conv_transpose2d`] with PyTorch's `output_padding` `(op_h, op_w)`: the output is
/// `(h - 1) s - 2p + kh + op_h` high (likewise wide), which makes a stride-2 layer exactly
/// double its input (CycleGAN's `ConvTranspose2d(k=3, s=2, p=1, output_padding=1)`). The
/// extra rows and columns are positions of the adjoint convolution's input that its
/// stride never reaches from the last output, so they only receive what the kernel puts
/// there (zeros when `op > p`). As in PyTorch, each `op` must be below its stride.
pub fn conv_transpose2d_padded(
    x: &Tensor,
    kernel: &Tensor,
    spec: ConvSpec,
    output_padding: (usize, usize),
) -> Result<Tensor> {
    transposed(x, kernel, spec, output_padding, 1.0)
}

/// `scale` times the transposed convolution with output padding.
fn transposed(
    x: &Tensor,
    kernel: &Tensor,
    spec: ConvSpec,
    output_padding: (usize, usize),
    scale: f64,
) -> Result<Tensor> {
    if let Some([x, kernel]) = precision::lowered([x, kernel])? {
        return transposed(&x, &kernel, spec, output_padding, scale)?.to_dtype(DType::F32);
    }
    let (b, c_in, h, w) = x.dims4()?;
    let (k_in, c_out, kh, kw) = kernel.dims4()?;
    if k_in != c_in {
        candle_core::bail!("conv_transpose2d: input has {c_in} channels, kernel expects {k_in}");
    }
    let (sh, sw) = spec.stride;
    let (ph, pw) = spec.padding;
    let (oph, opw) = output_padding;
    if h == 0 || w == 0 || sh == 0 || sw == 0 {
        candle_core::bail!("conv_transpose2d: input {h}x{w} and stride {sh},{sw} must be positive");
    }
    if oph >= sh || opw >= sw {
        candle_core::bail!(
            "conv_transpose2d: output padding {oph},{opw} must be smaller than the stride \
             {sh},{sw}"
        );
    }
    let (Some(ho), Some(wo)) = (
        ((h - 1) * sh + kh + oph).checked_sub(2 * ph),
        ((w - 1) * sw + kw + opw).checked_sub(2 * pw),
    ) else {
        candle_core::bail!(
            "conv_transpose2d: padding {ph},{pw} too large for {h}x{w} with kernel {kh}x{kw}"
        );
    };
    let fast = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.dtype() == kernel.dtype();
    if !fast {
        if x.device().is_cuda() && ph < kh && pw < kw {
            return scaled(
                transposed_as_convolution(x, kernel, spec, output_padding)?,
                scale,
            );
        }
        if sh != sw || ph != pw || oph != opw {
            candle_core::bail!(
                "Candle's conv_transpose2d needs equal strides, paddings and output paddings"
            );
        }
        return scaled(x.conv_transpose2d(kernel, ph, oph, sh, 1)?, scale);
    }
    // The input-gradient pass of a convolution over a (ho, wo) input: with op < s, that
    // convolution's output is (h, w) again.
    let pass = ConvPass {
        pass: Pass::InputGrad,
        x_dims: [b, c_out, ho, wo],
        k_dims: [c_in, c_out, kh, kw],
        spec,
        scale,
    };
    let g = Geometry::new(&pass.x_dims, &pass.k_dims, spec)?;
    if (g.ho, g.wo) != (h, w) {
        candle_core::bail!(
            "conv_transpose2d: output {ho}x{wo} does not convolve back to the input's {h}x{w}"
        );
    }
    apply(Pass::InputGrad, x, kernel, &pass)
}

/// [`conv_transpose2d_padded`] as a plain convolution: the input spread out by the stride (zeros
/// between its rows and columns), padded by `k - 1 - p` (plus the output padding at the bottom
/// and right), convolved with the kernel turned half a turn and its channel axes swapped.
///
/// Why, on CUDA: Candle's transposed convolution there is a direct kernel that took 61% of the
/// dcgan workload's GPU time on an H200 (`ncu`, 2026-11-30: 1.2-1.5 ms a launch for the 4x4
/// stride-2 layers), while its convolution is im2col and cuBLAS. The spread input is mostly
/// zeros (3/4 at stride 2); the product still runs on cuBLAS. Not yet timed on a GPU.
fn transposed_as_convolution(
    x: &Tensor,
    kernel: &Tensor,
    spec: ConvSpec,
    (oph, opw): (usize, usize),
) -> Result<Tensor> {
    let (_, _, kh, kw) = kernel.dims4()?;
    let (sh, sw) = spec.stride;
    let (ph, pw) = spec.padding;
    let spread = spread_out(&spread_out(x, 2, sh)?, 3, sw)?;
    let padded = spread
        .pad_with_zeros(2, kh - 1 - ph, kh - 1 - ph + oph)?
        .pad_with_zeros(3, kw - 1 - pw, kw - 1 - pw + opw)?;
    let flip = |n: usize| Tensor::arange(0u32, n as u32, kernel.device())?.flip(&[0]);
    let turned = kernel
        .transpose(0, 1)? // (c_out, c_in, kh, kw)
        .contiguous()?
        .index_select(&flip(kh)?, 2)?
        .index_select(&flip(kw)?, 3)?;
    candle_conv2d(&padded, &turned, ConvSpec::default())
}

/// `x` with `stride - 1` zeros between consecutive entries along `dim`.
fn spread_out(x: &Tensor, dim: usize, stride: usize) -> Result<Tensor> {
    let n = x.dim(dim)?;
    if stride == 1 || n == 0 {
        return Ok(x.clone());
    }
    let mut spread_dims = x.dims().to_vec();
    spread_dims[dim] = n * stride;
    x.unsqueeze(dim + 1)?
        .pad_with_zeros(dim + 1, 0, stride - 1)?
        .reshape(spread_dims)?
        .narrow(dim, 0, (n - 1) * stride + 1)
}

/// The same convolution with Candle's own ops (used off the CPU, and as the tests' reference),
/// routed around two limits of Candle 0.11's conv2d: it has one stride and one padding for both
/// axes, and its backward pass takes the transposed convolution's output padding from the
/// height alone, so it fails wherever the stride leaves a different number of unread rows than
/// columns (or any, for strides above 2). Here the input is padded explicitly and cut to exactly
/// the rows and columns the windows read, so the backward pass needs no output padding; unequal
/// strides run at stride 1 and keep every `sh`-th row and `sw`-th column.
pub fn candle_conv2d(x: &Tensor, kernel: &Tensor, spec: ConvSpec) -> Result<Tensor> {
    let g = Geometry::new(&dims4(x)?, &dims4(kernel)?, spec)?;
    let (ph, pw) = spec.padding;
    let (sh, sw) = spec.stride;
    let rows = (g.ho - 1) * sh + g.kh;
    let cols = (g.wo - 1) * sw + g.kw;
    if sh == sw && ph == pw && rows == g.h + 2 * ph && cols == g.w + 2 * pw {
        return x.conv2d(kernel, ph, sh, 1, 1);
    }
    let read = x
        .pad_with_zeros(2, ph, ph)?
        .narrow(2, 0, rows)?
        .pad_with_zeros(3, pw, pw)?
        .narrow(3, 0, cols)?
        .contiguous()?;
    if sh == sw {
        return read.conv2d(kernel, 0, sh, 1, 1);
    }
    let every = |t: &Tensor, dim: usize, step: usize, n: usize| -> Result<Tensor> {
        let index = Tensor::arange_step(0u32, (n * step) as u32, step as u32, t.device())?;
        t.index_select(&index, dim)
    };
    let full = read.conv2d(kernel, 0, 1, 1, 1)?;
    every(&every(&full, 2, sh, g.ho)?, 3, sw, g.wo)
}

/// The four dims of a rank-4 tensor as an array.
fn dims4(t: &Tensor) -> Result<[usize; 4]> {
    let (a, b, c, d) = t.dims4()?;
    Ok([a, b, c, d])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::rng::Rng;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// The fused convolution and `candle_conv2d` of `x` and `k` agree in shape, values and
    /// the gradients (input and kernel) of a random weighting of the output (seeded by `seed`).
    fn assert_both_paths_agree(
        case: usize,
        x: &Var,
        k: &Var,
        spec: ConvSpec,
        seed: u64,
    ) -> Result<()> {
        let fused = conv2d(x.as_tensor(), k.as_tensor(), spec)?;
        let routed = candle_conv2d(x.as_tensor(), k.as_tensor(), spec)?;
        assert_same_op(case, x, k, fused, routed, seed)
    }

    /// Two computations `fused` and `routed` of one op of `x` and `k` agree in shape, values
    /// and the gradients (input and kernel) of a random weighting of the output.
    fn assert_same_op(
        case: usize,
        x: &Var,
        k: &Var,
        fused: Tensor,
        routed: Tensor,
        seed: u64,
    ) -> Result<()> {
        assert_eq!(fused.dims(), routed.dims(), "case {case}");
        assert!(max_diff(&fused, &routed) < 1e-4, "case {case} forward");
        // A weighted sum, so every output's gradient differs.
        let weights = Rng::new(seed).normal(fused.dims().to_vec(), x.device())?;
        let g1 = (fused * &weights)?.sum_all()?.backward()?;
        let g2 = (routed * &weights)?.sum_all()?.backward()?;
        for (name, v) in [("input", x), ("kernel", k)] {
            assert_eq!(g1.get(v).unwrap().dims(), v.dims(), "case {case}: {name}");
            let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(d < 1e-3, "case {case}: {name} gradient differs by {d}");
        }
        Ok(())
    }

    /// (x dims, kernel dims, stride, padding).
    type Case = ([usize; 4], [usize; 4], (usize, usize), (usize, usize));

    fn cases() -> Vec<Case> {
        vec![
            ([2, 3, 7, 5], [4, 3, 3, 3], (1, 1), (1, 1)),
            ([3, 2, 9, 9], [5, 2, 7, 7], (1, 1), (3, 3)),
            ([1, 4, 8, 8], [3, 4, 4, 4], (2, 2), (1, 1)),
            ([2, 2, 7, 9], [2, 2, 1, 3], (1, 1), (0, 1)),
            ([2, 1, 6, 5], [3, 1, 2, 1], (1, 1), (1, 0)),
            ([4, 3, 5, 5], [2, 3, 5, 5], (1, 1), (0, 0)),
            // 128 output positions: groups of two images, the last group one image.
            ([3, 2, 16, 8], [3, 2, 1, 1], (1, 1), (0, 0)),
            // 4 x 4 and 1 x 1 outputs (DCGAN's discriminator): one group of seven images.
            ([7, 3, 8, 8], [5, 3, 4, 4], (2, 2), (1, 1)),
            ([7, 4, 4, 4], [1, 4, 4, 4], (1, 1), (0, 0)),
        ]
    }

    /// Strides that do not divide the padded input evenly: Candle's own backward fails there.
    fn uneven_cases() -> Vec<Case> {
        vec![
            ([1, 2, 11, 10], [3, 2, 3, 2], (3, 3), (2, 1)),
            ([2, 1, 6, 6], [2, 1, 3, 3], (2, 2), (0, 0)),
            ([1, 3, 7, 8], [2, 3, 2, 3], (2, 3), (1, 0)),
        ]
    }

    /// The cases above run single images, whole batches and a short last group.
    #[test]
    fn small_outputs_are_grouped_within_the_budget() -> Result<()> {
        let size = |x: [usize; 4], k: [usize; 4], stride, padding| -> Result<usize> {
            Ok(group_size(&Geometry::new(
                &x,
                &k,
                ConvSpec { stride, padding },
            )?))
        };
        assert_eq!(size([3, 2, 16, 8], [3, 2, 1, 1], (1, 1), (0, 0))?, 2);
        assert_eq!(size([7, 4, 4, 4], [1, 4, 4, 4], (1, 1), (0, 0))?, 7);
        assert_eq!(size([2, 3, 7, 5], [4, 3, 3, 3], (1, 1), (1, 1))?, 2);
        // PixelCNN's 28 x 28 maps: one image per product.
        assert_eq!(size([32, 64, 28, 28], [64, 64, 3, 3], (1, 1), (1, 1))?, 1);
        // DCGAN's 256 -> 1 layer at batch 64: the whole batch, 4096 x 64 columns.
        assert_eq!(size([64, 256, 4, 4], [1, 256, 4, 4], (1, 1), (0, 0))?, 64);
        Ok(())
    }

    /// The fused op against `candle_conv2d`, uneven strides and paddings included (which
    /// Candle's conv2d cannot express, and `candle_conv2d` routes around).
    #[test]
    fn forward_and_gradients_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        for (i, (xd, kd, stride, padding)) in cases().into_iter().chain(uneven_cases()).enumerate()
        {
            let spec = ConvSpec { stride, padding };
            let mut rng = Rng::new(i as u64);
            let x = Var::from_tensor(&rng.normal(xd.to_vec(), &dev)?)?;
            let k = Var::from_tensor(&rng.normal(kd.to_vec(), &dev)?)?;
            assert_both_paths_agree(i, &x, &k, spec, 60 + i as u64)?;
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for (i, (xd, kd, stride, padding)) in cases().into_iter().chain(uneven_cases()).enumerate()
        {
            let spec = ConvSpec { stride, padding };
            let mut rng = Rng::new(100 + i as u64);
            let x0 = rng.normal(xd.to_vec(), &dev)?.to_dtype(DType::F64)?;
            let k0 = rng.normal(kd.to_vec(), &dev)?.to_dtype(DType::F64)?;
            let out_dims = conv2d(&x0, &k0, spec)?.dims().to_vec();
            let weights = rng.normal(out_dims, &dev)?.to_dtype(DType::F64)?;
            let f = |x: &Tensor, k: &Tensor| -> Result<f64> {
                (conv2d(x, k, spec)? * &weights)?
                    .sum_all()?
                    .to_scalar::<f64>()
            };
            let (x, k) = (Var::from_tensor(&x0)?, Var::from_tensor(&k0)?);
            let grads = (conv2d(x.as_tensor(), k.as_tensor(), spec)? * &weights)?
                .sum_all()?
                .backward()?;
            for (which, base, var) in [(0, &x0, &x), (1, &k0, &k)] {
                let g = grads.get(var).unwrap().flatten_all()?.to_vec1::<f64>()?;
                let flat = base.flatten_all()?.to_vec1::<f64>()?;
                // A spread of entries, including the first and the last.
                for j in (0..flat.len())
                    .step_by((flat.len() / 7).max(1))
                    .chain([flat.len() - 1])
                {
                    let eps = 1e-6;
                    let shifted = |d: f64| -> Result<Tensor> {
                        let mut v = flat.clone();
                        v[j] += d;
                        Tensor::from_vec(v, base.dims(), &dev)
                    };
                    let (p, m) = (shifted(eps)?, shifted(-eps)?);
                    let fd = if which == 0 {
                        (f(&p, &k0)? - f(&m, &k0)?) / (2.0 * eps)
                    } else {
                        (f(&x0, &p)? - f(&x0, &m)?) / (2.0 * eps)
                    };
                    assert!(
                        (fd - g[j]).abs() < 1e-6 * (1.0 + fd.abs()),
                        "case {i} arg {which} entry {j}: {fd} vs {}",
                        g[j]
                    );
                }
            }
        }
        Ok(())
    }

    /// The Candle bugs this op also fixes: with a stride that leaves input rows unused, or
    /// leaves a different number of rows unused than columns, Candle's conv2d backward computes
    /// an input gradient of the wrong size and fails (its output padding comes from the height
    /// alone); and it has no unequal strides. `candle_conv2d`, the path off the CPU, routes
    /// around both: its gradients equal the fused op's.
    #[test]
    fn candle_backward_fails_on_uneven_strides_and_both_our_paths_do_not() -> Result<()> {
        let dev = Device::Cpu;
        let same = |s: usize, p: usize| ConvSpec {
            stride: (s, s),
            padding: (p, p),
        };
        // (x, kernel, spec): rows and columns left over by the stride differ, or exceed one.
        let uneven: [([usize; 4], [usize; 4], ConvSpec); 3] = [
            ([1, 2, 15, 12], [3, 2, 3, 2], same(3, 0)),
            ([2, 3, 8, 9], [4, 3, 3, 3], same(2, 1)),
            ([2, 3, 9, 8], [4, 3, 4, 4], same(2, 1)),
        ];
        for (i, (xd, kd, spec)) in uneven.into_iter().enumerate() {
            let x = Var::from_tensor(&Rng::new(i as u64).normal(xd.to_vec(), &dev)?)?;
            let k = Var::from_tensor(&Rng::new(9 + i as u64).normal(kd.to_vec(), &dev)?)?;
            let (s, p) = (spec.stride.0, spec.padding.0);
            let candle = x.as_tensor().conv2d(k.as_tensor(), p, s, 1, 1)?;
            assert!(candle.sum_all()?.backward().is_err(), "case {i}");
            assert_both_paths_agree(i, &x, &k, spec, 20)?;
        }
        Ok(())
    }

    #[test]
    fn bad_shapes_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev)?;
        let k = Tensor::zeros((2, 2, 3, 3), DType::F32, &dev)?;
        let e = conv2d(&x, &k, ConvSpec::default()).unwrap_err().to_string();
        assert!(e.contains("3 channels, kernel expects 2"), "{e}");
        let big = Tensor::zeros((2, 3, 9, 9), DType::F32, &dev)?;
        let e = conv2d(&x, &big, ConvSpec::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not fit"), "{e}");
        Ok(())
    }

    /// The CUDA route of the transposed convolution, run here on the CPU: the same values and
    /// gradients as the fused op, for DCGAN's and CycleGAN's layers, stride 1, and unequal
    /// strides and paddings.
    #[test]
    fn transposed_convolution_as_a_convolution_matches() -> Result<()> {
        let dev = Device::Cpu;
        // (x dims, kernel (c_in, c_out, kh, kw), stride, padding, output padding).
        let cases: [TransposedCase; 5] = [
            ([2, 6, 4, 4], [6, 3, 4, 4], (2, 2), (1, 1), (0, 0)),
            ([2, 4, 5, 5], [4, 2, 3, 3], (2, 2), (1, 1), (1, 1)),
            ([2, 5, 1, 1], [5, 3, 4, 4], (1, 1), (0, 0), (0, 0)),
            ([1, 3, 5, 4], [3, 2, 3, 3], (1, 1), (1, 1), (0, 0)),
            ([2, 3, 4, 5], [3, 2, 3, 2], (2, 3), (1, 0), (1, 2)),
        ];
        for (i, (xd, kd, stride, padding, op)) in cases.into_iter().enumerate() {
            let spec = ConvSpec { stride, padding };
            let mut rng = Rng::new(70 + i as u64);
            let x = Var::from_tensor(&rng.normal(xd.to_vec(), &dev)?)?;
            let k = Var::from_tensor(&rng.normal(kd.to_vec(), &dev)?)?;
            let fused = conv_transpose2d_padded(x.as_tensor(), k.as_tensor(), spec, op)?;
            let routed = transposed_as_convolution(x.as_tensor(), k.as_tensor(), spec, op)?;
            assert_same_op(i, &x, &k, fused, routed, 80 + i as u64)?;
        }
        Ok(())
    }

    /// (x dims, kernel dims, stride, padding, output padding).
    type TransposedCase = (
        [usize; 4],
        [usize; 4],
        (usize, usize),
        (usize, usize),
        (usize, usize),
    );

    /// The fused convolution, bias and activation equals the two ops it replaces, in values
    /// and in the gradients of input, kernel and bias, for each activation, at stride 1 and 2,
    /// and skips what a scoped backward pass does not want.
    #[test]
    fn convolution_with_bias_and_activation_is_the_two_ops() -> Result<()> {
        crate::kernels::ops::assert_fused_path_on();
        let dev = Device::Cpu;
        let mut rng = Rng::new(43);
        let specs = [
            ConvSpec::same_padding(3, 3),
            ConvSpec {
                stride: (2, 2),
                padding: (1, 1),
            },
        ];
        for (i, spec) in specs.into_iter().enumerate() {
            for act in [
                Activation::Identity,
                Activation::Relu,
                Activation::LeakyRelu(0.2),
            ] {
                let x = Var::from_tensor(&rng.normal((3, 2, 7, 6), &dev)?)?;
                let k = Var::from_tensor(&rng.normal((4, 2, 3, 3), &dev)?)?;
                let b = Var::from_tensor(&rng.normal(4, &dev)?)?;
                let (xt, kt, bt) = (x.as_tensor(), k.as_tensor(), b.as_tensor());
                let fused = conv2d_bias_activation(xt, kt, bt, spec, act)?;
                let two = bias_activation(&conv2d(xt, kt, spec)?, Some(bt), act)?;
                let case = format!("spec {i} {act:?}");
                assert_eq!(max_diff(&fused, &two), 0.0, "{case} forward");
                let probe = rng.normal(fused.dims(), &dev)?;
                let g_fused = (&fused * &probe)?.sum_all()?.backward()?;
                let g_two = (&two * &probe)?.sum_all()?.backward()?;
                for (name, v) in [("input", xt), ("kernel", kt), ("bias", bt)] {
                    let d = max_diff(g_fused.get(v).unwrap(), g_two.get(v).unwrap());
                    assert!(d < 1e-5, "{case} {name} gradient: {d}");
                }
                let scoped = crate::backprop::backward_for(&(&fused * &probe)?.sum_all()?, [&b])?;
                assert!(
                    scoped.get(kt).is_none() && scoped.get(bt).is_some(),
                    "{case}"
                );
                // With an equalized layer's scale inside.
                let fused = conv2d_scaled_bias_activation(xt, kt, bt, spec, act, 0.3)?;
                let two = bias_activation(&conv2d_scaled(xt, kt, spec, 0.3)?, Some(bt), act)?;
                assert_eq!(max_diff(&fused, &two), 0.0, "{case} scaled forward");
                let g_fused = (&fused * &probe)?.sum_all()?.backward()?;
                let g_two = (&two * &probe)?.sum_all()?.backward()?;
                let d = max_diff(g_fused.get(kt).unwrap(), g_two.get(kt).unwrap());
                assert!(d < 1e-5, "{case} scaled kernel gradient: {d}");
            }
        }
        let x = rng.normal((1, 2, 5, 5), &dev)?;
        let k = rng.normal((4, 2, 3, 3), &dev)?;
        let bias = rng.normal(3, &dev)?;
        let e = conv2d_bias_activation(&x, &k, &bias, ConvSpec::default(), Activation::Relu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[3]") && e.contains('4'), "{e}");
        Ok(())
    }

    /// The scale inside the op equals a scaled output, in values and in both gradients, for the
    /// convolution and the transposed one, and through a second backward pass (WGAN-GP's).
    #[test]
    fn a_scaled_convolution_is_the_scaled_output() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(41);
        let x = Var::from_tensor(&rng.normal((2, 3, 8, 8), &dev)?)?;
        let k = Var::from_tensor(&rng.normal((5, 3, 4, 4), &dev)?)?;
        let probe = rng.normal((2, 5, 4, 4), &dev)?;
        type Conv = fn(&Tensor, &Tensor) -> Result<Tensor>;
        let cases: [(&str, Conv, Conv); 2] = [
            (
                "conv2d",
                |x, k| conv2d_scaled(x, k, stride2(), 0.3),
                |x, k| conv2d(x, k, stride2())? * 0.3,
            ),
            (
                "conv_transpose2d",
                |y, k| conv_transpose2d_scaled(y, k, stride2(), 0.3),
                |y, k| conv_transpose2d(y, k, stride2())? * 0.3,
            ),
        ];
        fn stride2() -> ConvSpec {
            ConvSpec {
                stride: (2, 2),
                padding: (1, 1),
            }
        }
        for (name, ours, reference) in cases {
            // The transposed convolution maps the probe's shape back to x's.
            let input = match name {
                "conv2d" => x.as_tensor().clone(),
                _ => Var::from_tensor(&probe)?.as_tensor().clone(),
            };
            let weight = k.as_tensor();
            let (a, b) = (ours(&input, weight)?, reference(&input, weight)?);
            assert!(max_diff(&a, &b) < 1e-5, "{name} forward");
            let w = rng.normal(a.dims(), &dev)?;
            // The input's gradient, then a second pass through it (a penalty's).
            let second = |f: Conv| -> Result<(Tensor, Tensor)> {
                let first = (f(&input, weight)? * &w)?.sum_all()?.backward()?;
                let dx = first.get(&input).expect("an input gradient").clone();
                let dk = first.get(weight).expect("a kernel gradient").clone();
                let again = dx.sqr()?.sum_all()?.backward()?;
                let dk2 = again
                    .get(weight)
                    .expect("a second-order kernel gradient")
                    .clone();
                Ok((dk, dk2))
            };
            let ((dk_a, dk2_a), (dk_b, dk2_b)) = (second(ours)?, second(reference)?);
            assert!(max_diff(&dk_a, &dk_b) < 1e-4, "{name} kernel gradient");
            assert!(
                max_diff(&dk2_a, &dk2_b) < 1e-3,
                "{name} second-order gradient"
            );
        }
        Ok(())
    }

    #[test]
    fn transposed_convolution_matches_candle_and_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        // (x dims, kernel (c_in, c_out, k, k), stride, padding): DCGAN's 4x4 stride-2 layers,
        // its 1x1 -> 4x4 first layer, odd sizes.
        for (i, (xd, kd, s, p)) in [
            ([2, 3, 4, 4], [3, 2, 4, 4], 2, 1),
            ([2, 5, 1, 1], [5, 3, 4, 4], 1, 0),
            ([1, 2, 5, 3], [2, 4, 3, 3], 2, 0),
            ([3, 1, 6, 6], [1, 1, 3, 3], 1, 1),
            // InfoGAN's fully connected layers written as 1x1 and 1x1 -> 7x7 transposed
            // convolutions.
            ([2, 6, 1, 1], [6, 5, 1, 1], 1, 0),
            ([2, 6, 1, 1], [6, 3, 7, 7], 1, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let spec = ConvSpec {
                stride: (s, s),
                padding: (p, p),
            };
            let mut rng = Rng::new(50 + i as u64);
            let x = Var::from_tensor(&rng.normal(xd.to_vec(), &dev)?.to_dtype(DType::F64)?)?;
            let k = Var::from_tensor(&rng.normal(kd.to_vec(), &dev)?.to_dtype(DType::F64)?)?;
            let ours = conv_transpose2d(x.as_tensor(), k.as_tensor(), spec)?;
            let theirs = x.as_tensor().conv_transpose2d(k.as_tensor(), p, 0, s, 1)?;
            assert_eq!(ours.dims(), theirs.dims(), "case {i}");
            assert!(max_diff(&ours, &theirs) < 1e-9, "case {i} forward");
            let weights = rng
                .normal(ours.dims().to_vec(), &dev)?
                .to_dtype(DType::F64)?;
            let f = |x: &Tensor, k: &Tensor| -> Result<f64> {
                (conv_transpose2d(x, k, spec)? * &weights)?
                    .sum_all()?
                    .to_scalar::<f64>()
            };
            let grads = (ours * &weights)?.sum_all()?.backward()?;
            for (which, var) in [(0, &x), (1, &k)] {
                let g = grads.get(var).unwrap().flatten_all()?.to_vec1::<f64>()?;
                let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
                for j in (0..base.len()).step_by((base.len() / 5).max(1)) {
                    let at = |d: f64| -> Result<f64> {
                        let mut v = base.clone();
                        v[j] += d;
                        let t = Tensor::from_vec(v, var.dims(), &dev)?;
                        if which == 0 {
                            f(&t, k.as_tensor())
                        } else {
                            f(x.as_tensor(), &t)
                        }
                    };
                    let fd = (at(1e-6)? - at(-1e-6)?) / 2e-6;
                    assert!(
                        (fd - g[j]).abs() < 1e-6 * (1.0 + fd.abs()),
                        "case {i} arg {which} entry {j}: {fd} vs {}",
                        g[j]
                    );
                }
            }
        }
        Ok(())
    }

    /// Output padding against Candle's `conv_transpose2d(.., output_padding, ..)` in values
    /// and both gradients (f32, so the CPU kernel's path is the one used by models), and
    /// against central differences in f64: CycleGAN's k3 s2 p1 op1 layer, op > p (a zero last
    /// row), odd sizes, stride 3.
    #[test]
    fn output_padding_matches_candle_and_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for (i, (xd, kd, s, p, op)) in [
            ([2, 3, 4, 4], [3, 2, 3, 3], 2, 1, 1),
            ([1, 2, 3, 5], [2, 3, 4, 4], 2, 1, 1),
            ([2, 2, 3, 3], [2, 2, 3, 3], 2, 0, 1),
            ([1, 3, 4, 3], [3, 2, 3, 3], 3, 1, 2),
            ([2, 4, 1, 1], [4, 2, 2, 2], 2, 0, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let spec = ConvSpec {
                stride: (s, s),
                padding: (p, p),
            };
            let mut rng = Rng::new(70 + i as u64);
            let x = Var::from_tensor(&rng.normal(xd.to_vec(), &dev)?)?;
            let k = Var::from_tensor(&rng.normal(kd.to_vec(), &dev)?)?;
            let ours = conv_transpose2d_padded(x.as_tensor(), k.as_tensor(), spec, (op, op))?;
            let theirs = x.as_tensor().conv_transpose2d(k.as_tensor(), p, op, s, 1)?;
            let (h, w) = (xd[2], xd[3]);
            let want = [
                xd[0],
                kd[1],
                (h - 1) * s - 2 * p + kd[2] + op,
                (w - 1) * s - 2 * p + kd[3] + op,
            ];
            assert_eq!(ours.dims(), want, "case {i}");
            assert_eq!(theirs.dims(), want, "case {i}");
            assert!(max_diff(&ours, &theirs) < 1e-5, "case {i} forward");
            let weights = rng.normal(ours.dims().to_vec(), &dev)?;
            let g1 = (&ours * &weights)?.sum_all()?.backward()?;
            let g2 = (&theirs * &weights)?.sum_all()?.backward()?;
            for (name, v) in [("input", &x), ("kernel", &k)] {
                let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(d < 1e-4, "case {i}: {name} gradient differs by {d}");
            }
            // Central differences in f64 through the same pass.
            let (x0, k0) = (
                x.as_tensor().to_dtype(DType::F64)?,
                k.as_tensor().to_dtype(DType::F64)?,
            );
            let weights = weights.to_dtype(DType::F64)?;
            let f = |x: &Tensor, k: &Tensor| -> Result<f64> {
                (conv_transpose2d_padded(x, k, spec, (op, op))? * &weights)?
                    .sum_all()?
                    .to_scalar::<f64>()
            };
            let (xv, kv) = (Var::from_tensor(&x0)?, Var::from_tensor(&k0)?);
            let grads = (conv_transpose2d_padded(xv.as_tensor(), kv.as_tensor(), spec, (op, op))?
                * &weights)?
                .sum_all()?
                .backward()?;
            for (which, var) in [(0, &xv), (1, &kv)] {
                let g = grads.get(var).unwrap().flatten_all()?.to_vec1::<f64>()?;
                let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
                for j in (0..base.len()).step_by((base.len() / 5).max(1)) {
                    let at = |d: f64| -> Result<f64> {
                        let mut v = base.clone();
                        v[j] += d;
                        let t = Tensor::from_vec(v, var.dims(), &dev)?;
                        if which == 0 {
                            f(&t, &k0)
                        } else {
                            f(&x0, &t)
                        }
                    };
                    let fd = (at(1e-6)? - at(-1e-6)?) / 2e-6;
                    assert!(
                        (fd - g[j]).abs() < 1e-6 * (1.0 + fd.abs()),
                        "case {i} arg {which} entry {j}: {fd} vs {}",
                        g[j]
                    );
                }
            }
        }
        Ok(())
    }

    /// Numbers from torch 2.15: `F.conv_transpose2d` of [[1, 2], [3, 4]] with the kernel
    /// 1..9 (3x3), stride 2, output padding 1, padding 1 and 0 (its last row and column zero).
    #[test]
    fn output_padding_matches_pytorch_on_a_small_case() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &dev)?;
        let k = Tensor::arange(1f32, 10., &dev)?.reshape((1, 1, 3, 3))?;
        let run = |p: usize| -> Result<Vec<Vec<f32>>> {
            let spec = ConvSpec {
                stride: (2, 2),
                padding: (p, p),
            };
            conv_transpose2d_padded(&x, &k, spec, (1, 1))?
                .squeeze(0)?
                .squeeze(0)?
                .to_vec2()
        };
        assert_eq!(
            run(1)?,
            [
                [5., 14., 10., 12.],
                [14., 36., 24., 30.],
                [15., 34., 20., 24.],
                [24., 55., 32., 36.]
            ]
        );
        assert_eq!(
            run(0)?,
            [
                [1., 2., 5., 4., 6., 0.],
                [4., 5., 14., 10., 12., 0.],
                [10., 14., 36., 24., 30., 0.],
                [12., 15., 34., 20., 24., 0.],
                [21., 24., 55., 32., 36., 0.],
                [0., 0., 0., 0., 0., 0.]
            ]
        );
        Ok(())
    }

    #[test]
    fn output_padding_not_below_the_stride_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 3, 3), DType::F32, &dev)?;
        let k = Tensor::zeros((2, 1, 3, 3), DType::F32, &dev)?;
        let spec = ConvSpec {
            stride: (2, 2),
            padding: (1, 1),
        };
        let e = conv_transpose2d_padded(&x, &k, spec, (2, 1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("output padding 2,1 must be smaller than the stride 2,2"),
            "{e}"
        );
        Ok(())
    }
}
