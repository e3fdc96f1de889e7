//! Matrix products on the CPU, against weights laid out once at load time as `[n, k]` (each
//! output's weights contiguous).
//!
//! Two kernels, chosen by the number of rows:
//! - up to [`STREAM_ROWS`] rows (a decode step, or a short batch of them): every weight is read
//!   from memory once per call and used for all rows while it is in L1. Here the product is bound
//!   by memory bandwidth, not arithmetic (GPT-2 small reads 0.5 GB of weights per step), and the
//!   profile of the previous `matrixmultiply` path showed 62% of a decode step spent re-packing the
//!   weights on every call; no library offers a batched GEMV over pre-transposed weights that
//!   streams them once, so it is written here, its loops compiled for AVX2 / AVX-512 through
//!   `pulp::WithSimd` as the kernels in `kernels.rs` are.
//! - more rows (an encoder batch, a prompt): the `gemm` crate (faer's GEMM: packed, cache-blocked,
//!   AVX2 / AVX-512 micro-kernels chosen at run time, threaded on the rayon pool), pure Rust and
//!   kept up to date; a BLAS was ruled out as a system library every build would need. How it
//!   compares with `matrixmultiply` on these shapes in isolation was not measured: the machine
//!   never had the time or quiet for it (see `bench/README.md`).

use pulp::{Simd, WithSimd};

use super::super::backend::{Epilogue, MatShape};
use super::kernels;

/// Rows up to which the streaming kernel is used.
pub const STREAM_ROWS: usize = 16;
/// Outputs per task of the streaming kernel: enough that a task is worth handing to the pool.
const OUTPUTS_PER_TASK: usize = 64;

/// A weight matrix mapping `k` inputs to `n` outputs, stored `[n, k]`.
pub struct CpuMat {
    k: usize,
    n: usize,
    w: Vec<f32>,
}

impl MatShape for CpuMat {
    fn k(&self) -> usize {
        self.k
    }
    fn n(&self) -> usize {
        self.n
    }
}

impl std::fmt::Debug for CpuMat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuMat").field("k", &self.k).field("n", &self.n).finish_non_exhaustive()
    }
}

impl CpuMat {
    /// From `data` stored `[k, n]`, or `[n, k]` when `transposed`.
    pub fn new(data: &[f32], k: usize, n: usize, transposed: bool) -> Self {
        assert_eq!(data.len(), k * n, "weight size");
        let w = if transposed {
            data.to_vec()
        } else {
            let mut w = vec![0.0; k * n];
            // Blocked, so that both sides of the transposition stay in cache.
            const B: usize = 32;
            for k0 in (0..k).step_by(B) {
                for n0 in (0..n).step_by(B) {
                    for kk in k0..(k0 + B).min(k) {
                        for nn in n0..(n0 + B).min(n) {
                            w[nn * k + kk] = data[kk * n + nn];
                        }
                    }
                }
            }
            w
        };
        Self { k, n, w }
    }

    /// Output `j`'s weights.
    #[inline(always)]
    fn row(&self, j: usize) -> &[f32] {
        &self.w[j * self.k..(j + 1) * self.k]
    }
}

thread_local! {
    /// The streaming kernel's results, output-major, before they are laid out row by row.
    static TRANSPOSED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `x[m, k] · w + bias` into the first `m · n` elements of `out`, as `epilogue` says.
pub fn matmul_into(x: &[f32], m: usize, w: &CpuMat, bias: Option<&[f32]>, epilogue: Epilogue, out: &mut [f32]) {
    let (k, n) = (w.k, w.n);
    assert!(x.len() >= m * k, "matmul: x is too short");
    assert!(out.len() >= m * n, "matmul: out is too short");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "matmul: bias width");
    }
    let out = &mut out[..m * n];
    if m == 0 || n == 0 {
        return;
    }
    if m <= STREAM_ROWS {
        stream(&x[..m * k], m, w, bias, epilogue, out);
    } else {
        blocked(&x[..m * k], m, w, bias, epilogue, out);
    }
}

/// Output `j`'s bias plus `acc`, stored or added as `epilogue` says.
#[inline(always)]
fn finish(bias: Option<&[f32]>, epilogue: Epilogue, j: usize, acc: f32, o: &mut f32) {
    let v = acc + bias.map_or(0.0, |b| b[j]);
    match epilogue {
        Epilogue::Store(None) => *o = v,
        Epilogue::Store(Some(act)) => *o = kernels::activation(act, v),
        Epilogue::Add => *o += v,
    }
}

/// One row: outputs `j0..j0 + block.len()` of `x · w`, finished in place.
struct OneRow<'a> {
    x: &'a [f32],
    w: &'a CpuMat,
    bias: Option<&'a [f32]>,
    epilogue: Epilogue,
    j0: usize,
    block: &'a mut [f32],
}

impl WithSimd for OneRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let Self { x, w, bias, epilogue, j0, block } = self;
        let (quads, rest) = block.as_chunks_mut::<4>();
        let mut j = j0;
        for q in quads {
            let acc = kernels::dot4(x, [w.row(j), w.row(j + 1), w.row(j + 2), w.row(j + 3)]);
            for i in 0..4 {
                finish(bias, epilogue, j + i, acc[i], &mut q[i]);
            }
            j += 4;
        }
        for (i, o) in rest.iter_mut().enumerate() {
            finish(bias, epilogue, j + i, kernels::dot(x, w.row(j + i)), o);
        }
    }
}

/// Several rows: outputs `j0..` of `x · w` for every row, as `[output][row]` in `block`; four
/// outputs at a time share each load of a row of x, and their weights stay in L1 for all rows.
struct Rows<'a> {
    x: &'a [f32],
    m: usize,
    w: &'a CpuMat,
    j0: usize,
    block: &'a mut [f32],
}

impl WithSimd for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let Self { x, m, w, j0, block } = self;
        let k = w.k;
        let outputs = block.len() / m;
        let mut jj = 0;
        while jj + 4 <= outputs {
            let j = j0 + jj;
            let ws = [w.row(j), w.row(j + 1), w.row(j + 2), w.row(j + 3)];
            for r in 0..m {
                let acc = kernels::dot4(&x[r * k..(r + 1) * k], ws);
                for i in 0..4 {
                    block[(jj + i) * m + r] = acc[i];
                }
            }
            jj += 4;
        }
        for jj in jj..outputs {
            let wj = w.row(j0 + jj);
            for r in 0..m {
                block[jj * m + r] = kernels::dot(&x[r * k..(r + 1) * k], wj);
            }
        }
    }
}

/// Lays `t` (`[output][row]`) out row-major into `out`, finishing each output.
struct LayOut<'a> {
    t: &'a [f32],
    m: usize,
    n: usize,
    bias: Option<&'a [f32]>,
    epilogue: Epilogue,
    out: &'a mut [f32],
}

impl WithSimd for LayOut<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let Self { t, m, n, bias, epilogue, out } = self;
        for (r, row) in out.chunks_exact_mut(n).enumerate() {
            for (j, o) in row.iter_mut().enumerate() {
                finish(bias, epilogue, j, t[j * m + r], o);
            }
        }
    }
}

/// The few-rows kernel. For one row the outputs are written in place; for several they are
/// computed output-major (each task owns a contiguous block) and then laid out row-major.
fn stream(x: &[f32], m: usize, w: &CpuMat, bias: Option<&[f32]>, epilogue: Epilogue, out: &mut [f32]) {
    let (k, n) = (w.k, w.n);
    let parallel = m * n * k >= kernels::PARALLEL_ELEMENTS * 4;
    if m == 1 {
        kernels::chunked(out, OUTPUTS_PER_TASK, parallel, |t, block| {
            kernels::simd(OneRow { x, w, bias, epilogue, j0: t * OUTPUTS_PER_TASK, block });
        });
        return;
    }
    // Taken out of the thread local, not borrowed from it: while this thread waits for the pool,
    // rayon may run another product on it (one of another model's, or of another test's), which
    // would find the buffer still borrowed and panic the model thread. Intermittent, and it was:
    // "the model thread dropped the request" in the worker tests.
    let mut t = TRANSPOSED.take();
    t.clear();
    t.resize(n * m, 0.0);
    kernels::chunked(&mut t, OUTPUTS_PER_TASK * m, parallel, |task, block| {
        kernels::simd(Rows { x, m, w, j0: task * OUTPUTS_PER_TASK, block });
    });
    kernels::simd(LayOut { t: &t, m, n, bias, epilogue, out });
    TRANSPOSED.set(t);
}

/// The many-rows kernel: the `gemm` crate, bias and residual folded in through its `dst = α·dst
/// + β·x·w` form, the activation applied after.
fn blocked(x: &[f32], m: usize, w: &CpuMat, bias: Option<&[f32]>, epilogue: Epilogue, out: &mut [f32]) {
    let (k, n) = (w.k, w.n);
    let read_dst = match (epilogue, bias) {
        (Epilogue::Add, Some(b)) => {
            out.chunks_exact_mut(n).for_each(|row| kernels::add_assign(row, b));
            true
        }
        (Epilogue::Add, None) => true,
        (Epilogue::Store(_), Some(b)) => {
            out.chunks_exact_mut(n).for_each(|row| row.copy_from_slice(b));
            true
        }
        (Epilogue::Store(_), None) => false,
    };
    assert!(x.len() == m * k && w.w.len() == n * k && out.len() == m * n, "matmul extents");
    let to_isize = |v: usize| isize::try_from(v).expect("a matrix extent fits isize");
    let (k_, n_) = (to_isize(k), to_isize(n));
    #[expect(unsafe_code, reason = "the gemm crate takes raw pointers and strides; the extents are asserted above")]
    // SAFETY: `x` is `m × k` row-major (row stride k, column stride 1), `w.w` is `n × k` row-major
    // and read as the `k × n` matrix wᵀ (row stride 1, column stride k), `out` is `m × n` row-major;
    // the assert above checks that each slice holds exactly those elements, and `out` is borrowed
    // mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n_,
            read_dst,
            x.as_ptr(),
            1,
            k_,
            w.w.as_ptr(),
            k_,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
    if let Epilogue::Store(Some(act)) = epilogue {
        kernels::activate(out, act);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::backend::Act;

    fn naive(x: &[f32], m: usize, k: usize, w_kn: &[f32], n: usize, bias: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| x[r * k + i] * w_kn[i * n + c]).sum::<f32>() + bias[c];
            }
        }
        out
    }

    #[test]
    fn both_kernels_match_a_naive_product_with_every_epilogue() {
        // Sizes that are not multiples of the lanes or of the task width, on both sides of STREAM_ROWS.
        let (k, n) = (37, 131);
        let w: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let mat = CpuMat::new(&w, k, n, false);
        let wt: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
        let mat_t = CpuMat::new(&wt, k, n, true);
        assert_eq!(mat.w, mat_t.w);
        for m in [1, 3, STREAM_ROWS, STREAM_ROWS + 5] {
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let want = naive(&x, m, k, &w, n, &bias);
            let mut got = vec![0.0; m * n + 7];
            matmul_into(&x, m, &mat, Some(&bias), Epilogue::Store(None), &mut got);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "m={m}: {g} vs {w}");
            }
            assert!(got[m * n..].iter().all(|&v| v == 0.0), "m={m}: wrote past m rows");
            let mut acc = vec![1.0; m * n];
            matmul_into(&x, m, &mat, Some(&bias), Epilogue::Add, &mut acc);
            for (g, w) in acc.iter().zip(&want) {
                assert!((g - 1.0 - w).abs() < 1e-4, "m={m} add: {g} vs {w}");
            }
            let mut relu = vec![0.0; m * n];
            matmul_into(&x, m, &mat, None, Epilogue::Store(Some(Act::Relu)), &mut relu);
            let plain = naive(&x, m, k, &w, n, &vec![0.0; n]);
            for (g, w) in relu.iter().zip(&plain) {
                assert!((g - w.max(0.0)).abs() < 1e-4, "m={m} relu: {g} vs {w}");
            }
        }
    }
}
