//! Vector kernels for genzoo's own CPU ops, compiled three times (baseline x86-64, AVX2 + FMA,
//! AVX-512) and picked at run time from the CPU's features, so users need no build flag.
//!
//! Each kernel is written once as plain loops the compiler vectorises; `dispatch!` makes the
//! feature-specific copies. Sums run in [`LANES`] independent accumulators because the
//! compiler may not reorder one float sum into vector lanes itself.
//!
//! `exp` is Cephes' single-precision scheme: `exp(x) = 2^n exp(r)` with `n = round(x / ln 2)`,
//! `|r| <= ln 2 / 2`, and a degree-6 polynomial for `exp(r)` (about 2 ulp). libm's `expf` is a
//! scalar call per element, which made sigmoid the largest cost of NADE's scan.

/// Independent accumulators per sum: two AVX2 registers' worth.
const LANES: usize = 16;

/// `a * b + c`, fused where the instruction exists. Without FMA, `mul_add` would be a libm call.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Rounds to the nearest integer while |v| < 2^22, without a rounding instruction.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = madd::<FMA>(x, LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = madd::<FMA>(n, -LN2_LO, madd::<FMA>(n, -LN2_HI, x));
    let mut p = 1.987_569_1e-4;
    p = madd::<FMA>(p, r, 1.398_2e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 0.5);
    let er = madd::<FMA>(p, r * r, r + 1.0);
    // 2^n through the exponent bits. `shifted`'s low mantissa bits hold n itself (its ulp is
    // 1), read as integers: a float-to-int cast would saturate, which does not vectorise.
    // n is in [-126, 127] after the clamp.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    er * scale
}

/// `ln(1 + e)` for `e` in [0, 1], as `2 atanh(s)` with `s = e / (2 + e)` in [0, 1/3]: the
/// odd series to `s^15` leaves at most 1e-9.
#[inline(always)]
fn ln_1p_unit<const FMA: bool>(e: f32) -> f32 {
    let s = e / (2.0 + e);
    let z = s * s;
    let mut p = 1.0 / 15.0;
    p = madd::<FMA>(p, z, 1.0 / 13.0);
    p = madd::<FMA>(p, z, 1.0 / 11.0);
    p = madd::<FMA>(p, z, 1.0 / 9.0);
    p = madd::<FMA>(p, z, 1.0 / 7.0);
    p = madd::<FMA>(p, z, 1.0 / 5.0);
    p = madd::<FMA>(p, z, 1.0 / 3.0);
    p = madd::<FMA>(p, z, 1.0);
    2.0 * s * p
}

/// `softplus(l) = ln(1 + e^l) = max(l, 0) + ln(1 + e^-|l|)`: neither tail overflows.
#[inline(always)]
fn softplus<const FMA: bool>(l: f32) -> f32 {
    l.max(0.0) + ln_1p_unit::<FMA>(exp::<FMA>(-l.abs()))
}

#[inline(always)]
fn bce_with_logits_sum_generic<const FMA: bool>(logits: &[f32], targets: &[f32]) -> f32 {
    lane_sum(logits, targets, |acc, l, t| {
        acc + madd::<FMA>(-t, l, softplus::<FMA>(l))
    })
}

/// `out[i] = scale (sigmoid(l[i]) - t[i])`.
#[inline(always)]
fn bce_with_logits_grad_generic<const FMA: bool>(
    out: &mut [f32],
    scale: f32,
    logits: &[f32],
    targets: &[f32],
) {
    for ((o, &l), &t) in out.iter_mut().zip(logits).zip(targets) {
        *o = scale * (1.0 / (1.0 + exp::<FMA>(-l)) - t);
    }
}

#[inline(always)]
fn sigmoid_generic<const FMA: bool>(out: &mut [f32], a: &[f32]) {
    for (o, &v) in out.iter_mut().zip(a) {
        *o = 1.0 / (1.0 + exp::<FMA>(-v));
    }
}

#[inline(always)]
fn sigmoid_in_place_generic<const FMA: bool>(x: &mut [f32]) {
    for v in x {
        *v = 1.0 / (1.0 + exp::<FMA>(-*v));
    }
}

/// `tanh(x)`: an odd Taylor polynomial below 0.2 in magnitude (next term under 2e-10), else
/// `2 sigmoid(2x) - 1` (absolute error about 1e-7, relative under 1e-6 there).
#[inline(always)]
fn tanh_one<const FMA: bool>(x: f32) -> f32 {
    let z = x * x;
    let mut p = 62.0 / 2835.0;
    p = madd::<FMA>(p, z, -17.0 / 315.0);
    p = madd::<FMA>(p, z, 2.0 / 15.0);
    p = madd::<FMA>(p, z, -1.0 / 3.0);
    let small = madd::<FMA>(x * z, p, x);
    let large = 2.0 / (1.0 + exp::<FMA>(-2.0 * x)) - 1.0;
    if x.abs() < 0.2 {
        small
    } else {
        large
    }
}

#[inline(always)]
fn tanh_in_place_generic<const FMA: bool>(x: &mut [f32]) {
    for v in x {
        *v = tanh_one::<FMA>(*v);
    }
}

/// `acc = step(acc, a[i], b[i])` over the shorter slice, in [`LANES`] independent accumulators,
/// then their sum.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], step: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] = step(acc[l], x[l], y[l]);
        }
    }
    let tail = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(0.0, |t, (&x, &y)| step(t, x, y));
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn dot_generic<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    lane_sum(a, b, |acc, x, y| madd::<FMA>(x, y, acc))
}

#[inline(always)]
fn axpy_generic<const FMA: bool>(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = madd::<FMA>(alpha, x, *y);
    }
}

/// `acc += scale * v * h * (1 - h)`: the sigmoid's backward folded into a running sum.
#[inline(always)]
fn sigmoid_grad_accumulate_generic<const FMA: bool>(
    acc: &mut [f32],
    scale: f32,
    v: &[f32],
    h: &[f32],
) {
    for ((acc, &v), &h) in acc.iter_mut().zip(v).zip(h) {
        *acc = madd::<FMA>(scale * v, h - h * h, *acc);
    }
}

/// Adam's moment updates with the decayed gradient `g + wd p`.
#[inline(always)]
fn adam_moments_generic<const FMA: bool>(
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    p: &[f32],
    [beta1, beta2, weight_decay]: [f32; 3],
) {
    let decayed = |g: f32, p: f32| madd::<FMA>(weight_decay, p, g);
    for (((m, v), &g), &p) in m.iter_mut().zip(v.iter_mut()).zip(g).zip(p) {
        let g = decayed(g, p);
        *m = madd::<FMA>(beta1, *m, (1.0 - beta1) * g);
        *v = madd::<FMA>(beta2, *v, (1.0 - beta2) * g * g);
    }
}

/// `p -= step m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
#[inline(always)]
fn adam_parameter_generic<const FMA: bool>(
    p: &mut [f32],
    m: &[f32],
    v: &[f32],
    [step_size, bias_correction2_sqrt, eps]: [f32; 3],
) {
    let inv = 1.0 / bias_correction2_sqrt;
    for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
        *p -= step_size * m / madd::<FMA>(v.sqrt(), inv, eps);
    }
}

/// The product `A B^T` of two matrices stored by rows, added to `out (m, n)` (row-major):
/// `out[i n + j] += sum_t a[i lda + t] b[j ldb + t]` for `t < k`.
///
/// A convolution's weight gradient is this shape: both operands run along the pixels, so gemm,
/// whose micro-kernels want one operand by columns, first copies the larger one transposed,
/// element by element; that copy cost ProGAN's steps more than the products themselves.
/// Here each `MI x NJ` block of `out` is a set of dot products run side by side (`block`), both
/// operands read along their rows; rows and columns left over at the edges are single dot
/// products (`one`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn add_a_bt_blocked<const MI: usize, const NJ: usize>(
    out: &mut [f32],
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    (m, n, k): (usize, usize, usize),
    block: impl Fn([&[f32]; MI], [&[f32]; NJ]) -> [[f32; NJ]; MI],
    one: impl Fn(&[f32], &[f32]) -> f32,
) {
    let row_a = |i: usize| &a[i * lda..][..k];
    let row_b = |j: usize| &b[j * ldb..][..k];
    // Each block of `a`'s rows (the smaller operand in a weight gradient: O rows against
    // C kh kw) stays in L1 while `b`'s rows stream past it. The other order, a block of `b`
    // held while `a` streams, measured no faster (`cargo bench -p layers --bench kernels --
    // "conv2d 3x3 16.*genzoo"`, one thread, alternating: 18.7 and 21.5 ms this way, 29.0 and
    // 23.5 the other).
    for i0 in (0..m).step_by(MI) {
        for j0 in (0..n).step_by(NJ) {
            if i0 + MI <= m && j0 + NJ <= n {
                let sums = block(
                    std::array::from_fn(|i| row_a(i0 + i)),
                    std::array::from_fn(|j| row_b(j0 + j)),
                );
                for (i, row) in sums.iter().enumerate() {
                    for (j, s) in row.iter().enumerate() {
                        out[(i0 + i) * n + j0 + j] += s;
                    }
                }
            } else {
                for i in i0..(i0 + MI).min(m) {
                    for j in j0..(j0 + NJ).min(n) {
                        out[i * n + j] += one(row_a(i), row_b(j));
                    }
                }
            }
        }
    }
}

/// Explicit vector code for [`add_a_bt`]: written as plain loops, the compiler kept the
/// block's sums in memory and ran no faster than gemm.
#[cfg(target_arch = "x86_64")]
mod a_bt_x86 {
    use std::arch::x86_64::*;

    /// Lanes left over after the whole vectors, as one scalar dot product per pair.
    #[inline(always)]
    fn tail(a: &[f32], b: &[f32], from: usize) -> f32 {
        a[from..].iter().zip(&b[from..]).map(|(x, y)| x * y).sum()
    }

    /// A 4 x 4 block of 16-lane sums: 16 of AVX-512's 32 registers, 8 loads per 16 fused adds.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn block_avx512(a: [&[f32]; 4], b: [&[f32]; 4]) -> [[f32; 4]; 4] {
        let k = a[0].len();
        let whole = k - k % 16;
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let mut t = 0;
        while t < whole {
            // SAFETY: every row is `k` long and `t + 16 <= whole <= k`.
            let av: [__m512; 4] =
                std::array::from_fn(|i| unsafe { _mm512_loadu_ps(a[i].as_ptr().add(t)) });
            for j in 0..4 {
                // SAFETY: as above.
                let bj = unsafe { _mm512_loadu_ps(b[j].as_ptr().add(t)) };
                for i in 0..4 {
                    acc[i][j] = _mm512_fmadd_ps(av[i], bj, acc[i][j]);
                }
            }
            t += 16;
        }
        std::array::from_fn(|i| {
            std::array::from_fn(|j| _mm512_reduce_add_ps(acc[i][j]) + tail(a[i], b[j], whole))
        })
    }

    /// A 3 x 4 block of 8-lane sums: 12 of AVX2's 16 registers, 7 loads per 12 fused adds.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn block_avx2(a: [&[f32]; 3], b: [&[f32]; 4]) -> [[f32; 4]; 3] {
        let k = a[0].len();
        let whole = k - k % 8;
        let mut acc = [[_mm256_setzero_ps(); 4]; 3];
        let mut t = 0;
        while t < whole {
            // SAFETY: every row is `k` long and `t + 8 <= whole <= k`.
            let av: [__m256; 3] =
                std::array::from_fn(|i| unsafe { _mm256_loadu_ps(a[i].as_ptr().add(t)) });
            for j in 0..4 {
                // SAFETY: as above.
                let bj = unsafe { _mm256_loadu_ps(b[j].as_ptr().add(t)) };
                for i in 0..3 {
                    acc[i][j] = _mm256_fmadd_ps(av[i], bj, acc[i][j]);
                }
            }
            t += 8;
        }
        std::array::from_fn(|i| std::array::from_fn(|j| sum8(acc[i][j]) + tail(a[i], b[j], whole)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn sum8(v: __m256) -> f32 {
        let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
    }
}

/// Defines `pub fn $name` that runs `$generic` compiled for the best instruction set present.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident = $generic:ident ( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)?) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $generic::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic::<true>($($arg),*)
                }
                match level() {
                    // SAFETY: `level` reports only features this CPU has.
                    Level::Avx512 => return unsafe { avx512($($arg),*) },
                    Level::Avx2 => return unsafe { avx2($($arg),*) },
                    Level::Baseline => {}
                }
            }
            $generic::<false>($($arg),*)
        }
    };
}

/// The logistic function of one value as Candle computes it in `ops::sigmoid`, so that the
/// per-pixel samplers draw exactly what the tensor path would.
pub fn sigmoid_scalar(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// The instruction set the kernels run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Baseline,
    Avx2,
    Avx512,
}

/// Detected once; `GENZOO_SIMD=baseline|avx2` caps it (for tests and comparisons).
pub fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let detected = detect();
        match std::env::var("GENZOO_SIMD").as_deref() {
            Ok("baseline") => Level::Baseline,
            Ok("avx2") if detected == Level::Avx512 => Level::Avx2,
            _ => detected,
        }
    })
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if avx2 && is_x86_feature_detected!("avx512f") {
            return Level::Avx512;
        }
        if avx2 {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

dispatch!(
    /// `out[i] = 1 / (1 + exp(-a[i]))` over the shorter of the two slices.
    sigmoid = sigmoid_generic(out: &mut [f32], a: &[f32])
);
dispatch!(
    /// `x[i] = 1 / (1 + exp(-x[i]))`.
    sigmoid_in_place = sigmoid_in_place_generic(x: &mut [f32])
);
dispatch!(
    /// `x[i] = tanh(x[i])`.
    tanh_in_place = tanh_in_place_generic(x: &mut [f32])
);
dispatch!(
    /// `sum a[i] b[i]` over the shorter of the two slices.
    dot = dot_generic(a: &[f32], b: &[f32]) -> f32
);
dispatch!(
    /// `y[i] += alpha x[i]`.
    axpy = axpy_generic(y: &mut [f32], alpha: f32, x: &[f32])
);
dispatch!(
    /// `acc[i] += scale v[i] h[i] (1 - h[i])`.
    sigmoid_grad_accumulate = sigmoid_grad_accumulate_generic(acc: &mut [f32], scale: f32, v: &[f32], h: &[f32])
);

/// `out (m, n) += a (m, k) @ b (n, k)^T`, the rows of `a` and `b` `lda` and `ldb` apart
/// ([`add_a_bt_blocked`]), in the widest vectors the CPU has.
#[allow(clippy::too_many_arguments)]
pub fn add_a_bt(
    out: &mut [f32],
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    dims: (usize, usize, usize),
) {
    let (m, n, k) = dims;
    assert!(out.len() >= m * n, "add_a_bt: output too short");
    assert!(
        m == 0 || k == 0 || a.len() >= (m - 1) * lda + k,
        "add_a_bt: a too short"
    );
    assert!(
        n == 0 || k == 0 || b.len() >= (n - 1) * ldb + k,
        "add_a_bt: b too short"
    );
    #[cfg(target_arch = "x86_64")]
    {
        /// `add_a_bt_blocked` compiled for `$features` with `$block` as its block.
        macro_rules! blocked_for {
            ($name:ident, $features:literal, $block:path) => {
                #[target_feature(enable = $features)]
                fn $name(
                    o: &mut [f32],
                    a: &[f32],
                    lda: usize,
                    b: &[f32],
                    ldb: usize,
                    d: (usize, usize, usize),
                ) {
                    let one = dot_generic::<true>;
                    add_a_bt_blocked(o, a, lda, b, ldb, d, |a, b| $block(a, b), one)
                }
            };
        }
        blocked_for!(avx512, "avx512f,avx2,fma", a_bt_x86::block_avx512);
        blocked_for!(avx2, "avx2,fma", a_bt_x86::block_avx2);
        match level() {
            // SAFETY: `level` reports only features this CPU has.
            Level::Avx512 => return unsafe { avx512(out, a, lda, b, ldb, dims) },
            Level::Avx2 => return unsafe { avx2(out, a, lda, b, ldb, dims) },
            Level::Baseline => {}
        }
    }
    let one = |a: &[f32], b: &[f32]| dot_generic::<false>(a, b);
    let block = |a: [&[f32]; 1], b: [&[f32]; 1]| [[one(a[0], b[0])]];
    add_a_bt_blocked(out, a, lda, b, ldb, dims, block, one)
}

dispatch!(
    /// `sum_i softplus(l[i]) - t[i] l[i]`: Bernoulli negative log-likelihood of targets in
    /// [0, 1] under logits, in nats.
    bce_with_logits_sum = bce_with_logits_sum_generic(logits: &[f32], targets: &[f32]) -> f32
);
dispatch!(
    /// `out[i] = scale (sigmoid(l[i]) - t[i])`: the gradient of `scale * bce_with_logits_sum`.
    bce_with_logits_grad = bce_with_logits_grad_generic(out: &mut [f32], scale: f32, logits: &[f32], targets: &[f32])
);

dispatch!(
    /// Adam's moments: `m = b1 m + (1 - b1) g'`, `v = b2 v + (1 - b2) g'^2`, `g' = g + wd p`.
    adam_moments = adam_moments_generic(m: &mut [f32], v: &mut [f32], g: &[f32], p: &[f32], betas_and_decay: [f32; 3])
);
dispatch!(
    /// Adam's parameter step `p -= step m / (sqrt(v) / c2 + eps)`, given `[step, c2, eps]`.
    adam_parameter = adam_parameter_generic(p: &mut [f32], m: &[f32], v: &[f32], step_correction_eps: [f32; 3])
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value from -100 to 100 in steps of 1/64, plus the extremes.
    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (-6400..=6400).map(|i| i as f32 / 64.0).collect();
        v.extend([f32::MIN, -1e10, -89.0, 89.0, 1e10, f32::MAX, 1e-30, -1e-30]);
        v
    }

    fn check_exp<const FMA: bool>() {
        for x in (-87..=87).flat_map(|i| (0..16).map(move |k| i as f32 + k as f32 / 16.0)) {
            let (got, want) = (exp::<FMA>(x), (x as f64).exp());
            let rel = ((got as f64 - want) / want).abs();
            assert!(rel < 4e-7, "exp({x}) = {got}, want {want} (FMA {FMA})");
        }
    }

    /// CI runs the kernel tests again under `GENZOO_SIMD=baseline` and `GENZOO_SIMD=avx2`: this
    /// fails if the variable did not take (a typo, or the cap ignored), so those runs really
    /// exercise the narrower code.
    #[test]
    fn the_level_follows_genzoo_simd() {
        let want = match std::env::var("GENZOO_SIMD").ok().as_deref() {
            None => detect(),
            Some("baseline") => Level::Baseline,
            Some("avx2") if detect() == Level::Avx512 => Level::Avx2,
            Some("avx2") => detect(),
            Some(other) => panic!("GENZOO_SIMD={other}: not baseline or avx2"),
        };
        assert_eq!(level(), want);
    }

    #[test]
    fn exp_is_within_a_few_ulp_with_and_without_fma() {
        check_exp::<false>();
        check_exp::<true>();
    }

    #[test]
    fn sigmoid_matches_the_f64_formula_over_the_whole_range() {
        let a = inputs();
        let mut out = vec![0f32; a.len()];
        sigmoid(&mut out, &a);
        let mut baseline = vec![0f32; a.len()];
        sigmoid_generic::<false>(&mut baseline, &a);
        for ((&x, &got), &base) in a.iter().zip(&out).zip(&baseline) {
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!(
                (got as f64 - want).abs() <= 1e-7 + 4e-7 * want,
                "sigmoid({x}) = {got}, want {want}"
            );
            assert!(
                (got - base).abs() <= 1e-7 + 4e-7 * base,
                "levels differ at {x}"
            );
            assert!((0.0..=1.0).contains(&got));
        }
    }

    #[test]
    fn sums_and_updates_match_scalar_loops_at_odd_lengths() {
        for n in [0, 1, 15, 16, 17, 33, 500] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 13) as f32 - 6.0) / 4.0).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| (x * y) as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-4, "dot at n = {n}");

            let mut y = b.clone();
            axpy(&mut y, 0.5, &a);
            for i in 0..n {
                assert!((y[i] - (b[i] + 0.5 * a[i])).abs() < 1e-6);
            }

            let h: Vec<f32> = (0..n)
                .map(|i| (i as f32 + 0.5) / (n as f32 + 1.0))
                .collect();
            let mut acc = b.clone();
            sigmoid_grad_accumulate(&mut acc, 2.0, &a, &h);
            for i in 0..n {
                let want = b[i] + 2.0 * a[i] * h[i] * (1.0 - h[i]);
                assert!((acc[i] - want).abs() < 1e-5, "accumulate at {i} of {n}");
            }
        }
    }

    /// Every block shape and edge: rows and columns that fill no whole block, lengths that
    /// fill no whole vector or `k` block, rows longer than `k` (strided), and the sum added
    /// to what `out` held.
    #[test]
    fn a_times_b_transposed_matches_f64_sums_at_every_edge() {
        for (m, n, k) in [
            (1, 1, 1),
            (16, 144, 1024),
            (5, 7, 33),
            (3, 4, 513),
            (4, 4, 1100),
            (2, 9, 0),
            (0, 3, 5),
        ] {
            let (lda, ldb) = (k + 3, k + 1);
            let a: Vec<f32> = (0..m * lda)
                .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
                .collect();
            let b: Vec<f32> = (0..n * ldb)
                .map(|i| ((i * 5 % 13) as f32 - 6.0) / 4.0)
                .collect();
            let mut out: Vec<f32> = (0..m * n).map(|i| i as f32).collect();
            add_a_bt(&mut out, &a, lda, &b, ldb, (m, n, k));
            for i in 0..m {
                for j in 0..n {
                    let terms: Vec<f64> = (0..k)
                        .map(|t| a[i * lda + t] as f64 * b[j * ldb + t] as f64)
                        .collect();
                    let want = (i * n + j) as f64 + terms.iter().sum::<f64>();
                    // f32 rounding grows with the terms' size, not with their (cancelling) sum.
                    let scale = (i * n + j) as f64 + terms.iter().map(|t| t.abs()).sum::<f64>();
                    let got = out[i * n + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-6 * (1.0 + scale),
                        "({m}, {n}, {k}) at ({i}, {j}): {got} against {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn bernoulli_nll_matches_the_f64_formula_in_both_tails() {
        let logits = inputs();
        let logits: Vec<f32> = logits.into_iter().filter(|l| l.abs() < 1e9).collect();
        for target in [0.0f32, 1.0, 0.3] {
            let targets = vec![target; logits.len()];
            let mut want = 0f64;
            for &l in &logits {
                let l = l as f64;
                want += l.max(0.0) + (-l.abs()).exp().ln_1p() - target as f64 * l;
            }
            let got = bce_with_logits_sum(&logits, &targets) as f64;
            assert!(
                (got - want).abs() <= 1e-5 * want.abs(),
                "target {target}: {got} vs {want}"
            );
            for &l in &[-100.0f32, -3.5, -1e-3, 0.0, 2.0, 30.0, 100.0] {
                let one = bce_with_logits_sum(&[l], &[target]) as f64;
                let l64 = l as f64;
                let exact = l64.max(0.0) + (-l64.abs()).exp().ln_1p() - target as f64 * l64;
                assert!(
                    (one - exact).abs() <= 1e-6 + 1e-6 * exact.abs(),
                    "{l}: {one} vs {exact}"
                );
            }
            let mut grad = vec![0f32; logits.len()];
            bce_with_logits_grad(&mut grad, 2.0, &logits, &targets);
            for (&g, &l) in grad.iter().zip(&logits) {
                let want = 2.0 * (1.0 / (1.0 + (-(l as f64)).exp()) - target as f64);
                assert!((g as f64 - want).abs() < 1e-6, "grad at {l}: {g} vs {want}");
            }
        }
    }

    #[test]
    fn tanh_matches_the_f64_function_over_the_whole_range() {
        let mut x = inputs();
        let a = x.clone();
        tanh_in_place(&mut x);
        let mut y = a.clone();
        sigmoid_in_place(&mut y);
        for ((&v, &t), &s) in a.iter().zip(&x).zip(&y) {
            let want = (v as f64).tanh();
            assert!(
                (t as f64 - want).abs() <= 2e-7 + 1e-6 * want.abs(),
                "tanh({v}) = {t}, want {want}"
            );
            let want = 1.0 / (1.0 + (-(v as f64)).exp());
            assert!(
                (s as f64 - want).abs() <= 1e-7 + 4e-7 * want,
                "sigmoid({v})"
            );
        }
        // Tiny values keep their relative precision.
        let mut tiny = [1e-6f32, -3e-5, 0.1];
        tanh_in_place(&mut tiny);
        assert!((tiny[0] - 1e-6).abs() < 1e-12 && (tiny[1] + 3e-5).abs() < 1e-10);
    }
}
