//! The CPU's element-wise, reduction and attention kernels, written as plain loops over fixed-width
//! lanes so that the compiler can vectorise them, run inside `pulp`'s dispatch, and spread over the
//! one rayon pool when there is enough work.
//!
//! Known defect, measured with `perf annotate` on the release build: `pulp` compiles only what is
//! inlined into its `#[target_feature]` function, and the compiler outlines these closures (they
//! appear as `FnOnce::call_once`), so the loops run as baseline x86-64 code (SSE, partly scalar),
//! not AVX2/AVX-512. The fix is to give each kernel its own `#[target_feature]` function chosen at
//! run time (or a `pulp::WithSimd` impl whose `#[inline(always)]` method holds the loop, as the
//! `gemm` crate does); see `bench/README.md`.
//!
//! `exp`, `erf` and the GELU built on them are polynomial approximations rather than `libm` calls,
//! because a call per element cannot be vectorised: `exp` is Cephes' `expf` (range reduction by
//! ln 2, a degree-5 polynomial; about 1 ulp) and `erf` the rational approximation Eigen and XLA use
//! for `f32` (clamped to ±4, where it is ±1 in single precision). The tests hold both to the
//! `libm` functions.

use rayon::prelude::*;

use super::super::backend::Act;

/// Lanes per accumulator: one AVX-512 register, or two AVX2 ones.
const LANES: usize = 16;
/// Elements below which an element-wise pass stays on the calling thread (a rayon hand-off costs
/// a few microseconds, as much as a few thousand elements' work).
pub const PARALLEL_ELEMENTS: usize = 1 << 15;

/// `e^x`, branch-free so that loops over it vectorise. Inputs are clamped to where `f32` neither
/// overflows nor turns subnormal.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.336_54, 88.376_26);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 in two parts, so that `x - n ln 2` is exact enough.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// The error function (Eigen's `f32` rational approximation).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = -2.726_142_3e-10;
    let p = x2 * p + 2.770_681_4e-8;
    let p = x2 * p + -2.101_024_1e-6;
    let p = x2 * p + -5.692_506_4e-5;
    let p = x2 * p + -7.349_906_3e-4;
    let p = x2 * p + -2.954_599_8e-3;
    let p = x2 * p + -1.609_603_3e-2;
    let q = -1.456_607_2e-5;
    let q = x2 * q + -2.133_740_6e-4;
    let q = x2 * q + -1.682_827e-3;
    let q = x2 * q + -7.373_329e-3;
    let q = x2 * q + -1.426_473_9e-2;
    x * p / q
}

/// An activation, in its vectorisable form.
#[inline(always)]
pub fn activation(act: Act, x: f32) -> f32 {
    match act {
        Act::GeluErf => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        Act::GeluTanh => {
            // tanh(y) = 1 - 2 / (e^2y + 1): exact at both ends, and its absolute error near 0
            // (a few 1e-8) vanishes in 0.5 · x · (1 + tanh).
            let c = 0.797_884_6; // √(2/π)
            let y = c * (x + 0.044_715 * x * x * x);
            0.5 * x * (2.0 - 2.0 / (exp(2.0 * y) + 1.0))
        }
        Act::Relu => x.max(0.0),
        // A standalone tanh keeps its relative precision near 0, which the form above would not.
        Act::Tanh => x.tanh(),
        Act::Sigmoid => 1.0 / (1.0 + exp(-x)),
    }
}

/// Runs `f` over `chunk`-sized pieces of `data`, with their index, on the pool when `parallel`
/// (and on the calling thread otherwise, where a hand-off would cost more than the work).
pub fn chunked<T: Send>(data: &mut [T], chunk: usize, parallel: bool, f: impl Fn(usize, &mut [T]) + Sync) {
    if parallel {
        data.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        data.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// Applies `f` to every element, vectorised, on the pool when `x` is large.
fn map(x: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    let arch = pulp::Arch::new();
    let run = |chunk: &mut [f32]| {
        arch.dispatch(
            #[inline(always)]
            || {
                for v in chunk.iter_mut() {
                    *v = f(*v);
                }
            },
        );
    };
    if x.len() < PARALLEL_ELEMENTS {
        run(x);
    } else {
        x.par_chunks_mut(PARALLEL_ELEMENTS / 4).for_each(run);
    }
}

pub fn activate(x: &mut [f32], act: Act) {
    match act {
        Act::GeluErf => map(
            x,
            #[inline(always)]
            |v| activation(Act::GeluErf, v),
        ),
        Act::GeluTanh => map(
            x,
            #[inline(always)]
            |v| activation(Act::GeluTanh, v),
        ),
        Act::Relu => map(
            x,
            #[inline(always)]
            |v| activation(Act::Relu, v),
        ),
        Act::Tanh => map(
            x,
            #[inline(always)]
            |v| activation(Act::Tanh, v),
        ),
        Act::Sigmoid => map(
            x,
            #[inline(always)]
            |v| activation(Act::Sigmoid, v),
        ),
    }
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "add_assign lengths");
    pulp::Arch::new().dispatch(
        #[inline(always)]
        || x.iter_mut().zip(y).for_each(|(a, b)| *a += b),
    );
}

/// The sum of `x`, in `LANES` independent partial sums (a single running sum cannot be vectorised
/// without reordering, which the compiler may not do on its own).
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// `Σ a[i] · b[i]`, in `LANES` partial sums.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Four dot products of `x` with `w[0..4]` at once, so that each piece of `x` is loaded once for
/// four multiply-adds (a matrix product's few-rows kernel is otherwise bound by loads).
#[inline(always)]
pub fn dot4(x: &[f32], w: [&[f32]; 4]) -> [f32; 4] {
    let n = x.len();
    let w = w.map(|w| &w[..n]);
    let mut acc = [[0f32; LANES]; 4];
    let full = n / LANES * LANES;
    for c in (0..full).step_by(LANES) {
        let xs = &x[c..c + LANES];
        for (a, w) in acc.iter_mut().zip(&w) {
            let ws = &w[c..c + LANES];
            for i in 0..LANES {
                a[i] += xs[i] * ws[i];
            }
        }
    }
    let mut out = [0f32; 4];
    for ((o, a), w) in out.iter_mut().zip(&acc).zip(&w) {
        *o = a.iter().sum::<f32>() + x[full..].iter().zip(&w[full..]).map(|(x, y)| x * y).sum::<f32>();
    }
    out
}

/// Layer norm of each `cols`-wide row of `x` into `out` (both `rows · cols` long).
pub fn layer_norm(x: &[f32], cols: usize, gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "layer_norm lengths");
    assert!(gamma.len() == cols && beta.len() == cols, "layer_norm parameters");
    let arch = pulp::Arch::new();
    let run = |(row, o): (&[f32], &mut [f32])| {
        arch.dispatch(
            #[inline(always)]
            || {
                // Two passes, as PyTorch does, rather than E[x²] - E[x]², which cancels badly.
                let mean = sum(row) / cols as f32;
                let mut acc = [0f32; LANES];
                let chunks = row.chunks_exact(LANES);
                let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
                for c in chunks {
                    for i in 0..LANES {
                        acc[i] += (c[i] - mean) * (c[i] - mean);
                    }
                }
                let var = (acc.iter().sum::<f32>() + tail) / cols as f32;
                let inv = 1.0 / (var + eps).sqrt();
                for (((o, v), g), b) in o.iter_mut().zip(row).zip(gamma).zip(beta) {
                    *o = (v - mean) * inv * g + b;
                }
            },
        );
    };
    if x.len() < PARALLEL_ELEMENTS {
        x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)).for_each(run);
    } else {
        x.par_chunks_exact(cols).zip(out.par_chunks_exact_mut(cols)).with_min_len(8).for_each(run);
    }
}

/// Each row divided by its L2 norm, clamped at 1e-12 as PyTorch's `normalize`.
pub fn l2_normalize(x: &mut [f32], cols: usize) {
    pulp::Arch::new().dispatch(
        #[inline(always)]
        || {
            for row in x.chunks_exact_mut(cols) {
                let norm = dot(row, row).sqrt().max(1e-12);
                row.iter_mut().for_each(|v| *v /= norm);
            }
        },
    );
}

/// Where one query's keys and values are: row `j`'s head slice starts at `base + j · stride`.
#[derive(Debug, Clone, Copy)]
pub struct Keys<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub base: usize,
    pub stride: usize,
    /// How many keys the query sees.
    pub visible: usize,
}

/// One query of one head: `out = softmax(q · Kᵀ · scale) · V` over the visible keys, the scores
/// in `scores` (reused between calls, so a decode step allocates nothing once it is warm). Each
/// (query, head) pair is independent, which is how the callers spread them over the pool.
#[inline(always)]
pub fn attend(q: &[f32], keys: Keys<'_>, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    let d = q.len();
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for j in 0..keys.visible {
        let at = keys.base + j * keys.stride;
        let s = dot(q, &keys.k[at..at + d]) * scale;
        max = max.max(s);
        scores.push(s);
    }
    for s in scores.iter_mut() {
        *s = exp(*s - max);
    }
    let inv = 1.0 / sum(scores);
    out.iter_mut().for_each(|o| *o = 0.0);
    for (j, p) in scores.iter().enumerate() {
        let at = keys.base + j * keys.stride;
        let w = p * inv;
        out.iter_mut().zip(&keys.v[at..at + d]).for_each(|(o, v)| *o += w * v);
    }
}

thread_local! {
    /// Each pool thread's attention scores, grown to the longest context it has seen.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `attend` for every `head_dim`-wide output slice of `out`, on the pool when there are
/// enough; `keys(slice_index)` says where that slice's query, keys and values are.
pub fn attention_slices<'a>(
    out: &mut [f32],
    head_dim: usize,
    work_per_slice: usize,
    query_and_keys: impl Fn(usize) -> (&'a [f32], Keys<'a>) + Sync,
) {
    let scale = 1.0 / (head_dim as f32).sqrt();
    let arch = pulp::Arch::new();
    let run = |(i, o): (usize, &mut [f32])| {
        let (q, keys) = query_and_keys(i);
        SCORES.with_borrow_mut(|scores| {
            arch.dispatch(
                #[inline(always)]
                || attend(q, keys, scale, scores, o),
            )
        });
    };
    let slices = out.len() / head_dim;
    if slices * work_per_slice < PARALLEL_ELEMENTS {
        out.chunks_exact_mut(head_dim).enumerate().for_each(run);
    } else {
        let min = (PARALLEL_ELEMENTS / 4 / work_per_slice.max(1)).max(1);
        out.par_chunks_exact_mut(head_dim).enumerate().with_min_len(min).for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_match_libm() {
        let mut worst_exp = 0f32;
        let mut worst_erf = 0f32;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-3;
            let want = x.exp();
            worst_exp = worst_exp.max((exp(x) - want).abs() / want);
            worst_erf = worst_erf.max((erf(x / 10.0) - libm::erff(x / 10.0)).abs());
        }
        assert!(worst_exp < 1e-6, "exp: relative error {worst_exp}");
        assert!(worst_erf < 1e-6, "erf: absolute error {worst_erf}");
    }

    #[test]
    fn vectorised_activations_match_the_scalar_definitions() {
        for act in [Act::GeluErf, Act::GeluTanh, Act::Relu, Act::Tanh, Act::Sigmoid] {
            let xs: Vec<f32> = (-4000..4000).map(|i| i as f32 * 2.5e-3).collect();
            let mut got = xs.clone();
            activate(&mut got, act);
            for (x, g) in xs.iter().zip(&got) {
                let want = act.apply(*x);
                // GELU is computed as x times something near 1 + (-1): its rounding scales with |x|.
                assert!((g - want).abs() <= 1e-6 * (1.0 + x.abs()), "{act:?}({x}) = {g}, want {want}");
            }
        }
    }

    #[test]
    fn layer_norm_and_sums_match_plain_loops() {
        let cols = 37;
        let x: Vec<f32> = (0..cols * 3).map(|i| ((i * 7919) % 101) as f32 * 0.01 - 0.4).collect();
        let g: Vec<f32> = (0..cols).map(|i| 1.0 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..cols).map(|i| i as f32 * -0.02).collect();
        let mut out = vec![0.0; x.len()];
        layer_norm(&x, cols, &g, &b, 1e-5, &mut out);
        for (row, o) in x.chunks(cols).zip(out.chunks(cols)) {
            let mean = row.iter().sum::<f32>() / cols as f32;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / cols as f32;
            for i in 0..cols {
                let want = (row[i] - mean) / (var + 1e-5).sqrt() * g[i] + b[i];
                assert!((o[i] - want).abs() < 1e-5, "{} vs {want}", o[i]);
            }
        }
        assert!((dot(&x, &x) - x.iter().map(|v| v * v).sum::<f32>()).abs() < 1e-4);
        let ws: Vec<Vec<f32>> = (0..4).map(|t| x.iter().map(|v| v * t as f32 - 0.1).collect()).collect();
        let four = dot4(&x, [&ws[0], &ws[1], &ws[2], &ws[3]]);
        for (t, w) in ws.iter().enumerate() {
            assert!((four[t] - dot(&x, w)).abs() < 1e-4, "{} vs {}", four[t], dot(&x, w));
        }
    }
}
