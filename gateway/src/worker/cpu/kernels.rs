//! The CPU's element-wise, reduction and attention kernels, written as plain loops over fixed-width
//! lanes so that the compiler vectorises them, compiled for the widest instruction set the CPU has
//! (chosen at run time through `pulp`), and spread over the one rayon pool when there is enough work.
//!
//! Each kernel is a struct implementing `pulp::WithSimd`, whose `#[inline(always)]` `with_simd`
//! holds the loop: `pulp::Arch::dispatch` calls it from inside its `#[target_feature]` (AVX2+FMA or
//! AVX-512) function, so the loop is compiled there. An earlier version handed `dispatch` closures
//! instead; a closure called through `FnOnce` goes through a shim that is not inlined, so the loops
//! were compiled in the shim, for baseline x86-64 (SSE, the accumulators spilled to the stack), as
//! `perf annotate` showed. Inside the kernels, loops are `for` loops over `as_chunks` rather than
//! iterator adaptors taking closures, for the same reason.
//!
//! `exp`, `erf` and the GELU built on them are polynomial approximations rather than `libm` calls,
//! because a call per element cannot be vectorised: `exp` is Cephes' `expf` (range reduction by
//! ln 2, a degree-5 polynomial; about 1 ulp) and `erf` the rational approximation Eigen and XLA use
//! for `f32` (clamped to ±4, where it is ±1 in single precision). The tests hold both to the
//! `libm` functions.

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use super::super::backend::Act;

/// Lanes per accumulator: one AVX-512 register, or two AVX2 ones.
const LANES: usize = 16;
/// Elements below which an element-wise pass stays on the calling thread (a rayon hand-off costs
/// a few microseconds, as much as a few thousand elements' work).
pub const PARALLEL_ELEMENTS: usize = 1 << 15;

/// Runs `op` compiled for the widest SIMD instruction set this CPU has.
#[inline(always)]
pub fn simd<Op: WithSimd>(op: Op) -> Op::Output {
    pulp::Arch::new().dispatch(op)
}

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
    let p = p * r + 5e-1;
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
    let p = x2 * p + -2.954_6e-3;
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

/// Applies an activation to every element of `x` (see [`activate`]).
struct Activate<'a> {
    x: &'a mut [f32],
    act: Act,
}

impl WithSimd for Activate<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        // One loop per activation, each with its activation a constant, so that each loop is
        // straight-line code the compiler vectorises.
        macro_rules! each {
            ($act:expr) => {
                for v in self.x.iter_mut() {
                    *v = activation($act, *v);
                }
            };
        }
        match self.act {
            Act::GeluErf => each!(Act::GeluErf),
            Act::GeluTanh => each!(Act::GeluTanh),
            Act::Relu => each!(Act::Relu),
            Act::Tanh => each!(Act::Tanh),
            Act::Sigmoid => each!(Act::Sigmoid),
        }
    }
}

/// Applies `act` to every element, vectorised, on the pool when `x` is large.
pub fn activate(x: &mut [f32], act: Act) {
    if x.len() < PARALLEL_ELEMENTS {
        simd(Activate { x, act });
    } else {
        x.par_chunks_mut(PARALLEL_ELEMENTS / 4).for_each(|x| simd(Activate { x, act }));
    }
}

struct AddAssign<'a> {
    x: &'a mut [f32],
    y: &'a [f32],
}

impl WithSimd for AddAssign<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        for (a, b) in self.x.iter_mut().zip(self.y) {
            *a += *b;
        }
    }
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "add_assign lengths");
    simd(AddAssign { x, y });
}

/// The sum of `x`, in `LANES` independent partial sums (a single running sum cannot be vectorised
/// without reordering, which the compiler may not do on its own).
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (chunks, tail) = x.as_chunks::<LANES>();
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
    let (ca, ta) = a[..n].as_chunks::<LANES>();
    let (cb, tb) = b[..n].as_chunks::<LANES>();
    let mut acc = [0f32; LANES];
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ta.iter().zip(tb) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

/// Four dot products of `x` with `w[0..4]` at once, so that each piece of `x` is loaded once for
/// four multiply-adds (a matrix product's few-rows kernel is otherwise bound by loads).
#[inline(always)]
pub fn dot4(x: &[f32], w: [&[f32]; 4]) -> [f32; 4] {
    let n = x.len();
    let (xs, xt) = x.as_chunks::<LANES>();
    let [(w0, t0), (w1, t1), (w2, t2), (w3, t3)] = w.map(|w| w[..n].as_chunks::<LANES>());
    let mut acc = [[0f32; LANES]; 4];
    for ((((xc, a), b), c), d) in xs.iter().zip(w0).zip(w1).zip(w2).zip(w3) {
        for i in 0..LANES {
            acc[0][i] += xc[i] * a[i];
            acc[1][i] += xc[i] * b[i];
            acc[2][i] += xc[i] * c[i];
            acc[3][i] += xc[i] * d[i];
        }
    }
    let mut out = [0f32; 4];
    for ((o, a), t) in out.iter_mut().zip(&acc).zip([t0, t1, t2, t3]) {
        let mut tail = 0f32;
        for (x, y) in xt.iter().zip(t) {
            tail += x * y;
        }
        *o = a.iter().sum::<f32>() + tail;
    }
    out
}

/// Layer norm of every `cols`-wide row of `x` into `out`.
struct LayerNorm<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
    cols: usize,
    gamma: &'a [f32],
    beta: &'a [f32],
    eps: f32,
}

impl WithSimd for LayerNorm<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let cols = self.cols;
        for (row, o) in self.x.chunks_exact(cols).zip(self.out.chunks_exact_mut(cols)) {
            // Two passes, as PyTorch does, rather than E[x²] - E[x]², which cancels badly.
            let mean = sum(row) / cols as f32;
            let mut acc = [0f32; LANES];
            let (chunks, tail) = row.as_chunks::<LANES>();
            for c in chunks {
                for i in 0..LANES {
                    acc[i] += (c[i] - mean) * (c[i] - mean);
                }
            }
            let mut tail_sum = 0f32;
            for v in tail {
                tail_sum += (v - mean) * (v - mean);
            }
            let var = (acc.iter().sum::<f32>() + tail_sum) / cols as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for (((o, v), g), b) in o.iter_mut().zip(row).zip(self.gamma).zip(self.beta) {
                *o = (v - mean) * inv * g + b;
            }
        }
    }
}

/// Layer norm of each `cols`-wide row of `x` into `out` (both `rows · cols` long).
pub fn layer_norm(x: &[f32], cols: usize, gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "layer_norm lengths");
    assert!(gamma.len() == cols && beta.len() == cols, "layer_norm parameters");
    if x.len() < PARALLEL_ELEMENTS {
        simd(LayerNorm { x, out, cols, gamma, beta, eps });
    } else {
        // Eight rows per task, as before: a row is a few microseconds' work.
        x.par_chunks(8 * cols)
            .zip(out.par_chunks_mut(8 * cols))
            .for_each(|(x, out)| simd(LayerNorm { x, out, cols, gamma, beta, eps }));
    }
}

struct L2Normalize<'a> {
    x: &'a mut [f32],
    cols: usize,
}

impl WithSimd for L2Normalize<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        for row in self.x.chunks_exact_mut(self.cols) {
            let norm = dot(row, row).sqrt().max(1e-12);
            for v in row.iter_mut() {
                *v /= norm;
            }
        }
    }
}

/// Each row divided by its L2 norm, clamped at 1e-12 as PyTorch's `normalize`.
pub fn l2_normalize(x: &mut [f32], cols: usize) {
    simd(L2Normalize { x, cols });
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
struct Attend<'a> {
    q: &'a [f32],
    keys: Keys<'a>,
    scale: f32,
    scores: &'a mut Vec<f32>,
    out: &'a mut [f32],
}

impl WithSimd for Attend<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let Self { q, keys, scale, scores, out } = self;
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
        for o in out.iter_mut() {
            *o = 0.0;
        }
        for (j, p) in scores.iter().enumerate() {
            let at = keys.base + j * keys.stride;
            let w = p * inv;
            for (o, v) in out.iter_mut().zip(&keys.v[at..at + d]) {
                *o += w * v;
            }
        }
    }
}

thread_local! {
    /// Each pool thread's attention scores, grown to the longest context it has seen.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs one query's attention for every `head_dim`-wide output slice of `out`, on the pool when
/// there are enough; `query_and_keys(slice_index)` says where that slice's query, keys and values are.
pub fn attention_slices<'a>(
    out: &mut [f32],
    head_dim: usize,
    work_per_slice: usize,
    query_and_keys: impl Fn(usize) -> (&'a [f32], Keys<'a>) + Sync,
) {
    let scale = 1.0 / (head_dim as f32).sqrt();
    let run = |(i, out): (usize, &mut [f32])| {
        let (q, keys) = query_and_keys(i);
        SCORES.with_borrow_mut(|scores| simd(Attend { q, keys, scale, scores, out }));
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
