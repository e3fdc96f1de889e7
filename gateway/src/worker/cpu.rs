//! The CPU backend: plain `Vec<f32>` buffers, weights laid out once as `[n, k]`, matrix products in
//! `cpu/matmul.rs` (the `gemm` crate for many rows, a weight-streaming kernel for the few rows of a
//! decode step) and the rest in `cpu/kernels.rs` (loops written to vectorise, attention per query and
//! head, compiled for AVX2 / AVX-512 at run time).
//!
//! Threads: everything parallel runs on rayon's one global pool, sized to the machine. The model
//! thread hands each whole forward pass to the pool ([`Backend::compute`]), so the operations inside
//! it split their work between the pool's threads directly rather than each waking them from
//! outside; tokio's threads only parse, batch and answer, and sleep while the model computes.

mod kernels;
mod matmul;

use rayon::prelude::*;

pub use self::matmul::CpuMat;
use super::backend::{Act, Attention, Backend, Epilogue, KvCache, Result};

/// The CPU. Always available.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cpu;

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Mat = CpuMat;

    fn describe(&self) -> String {
        "cpu".into()
    }

    fn compute<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        // Runs `f` on a pool thread; the calling thread waits.
        rayon::scope(|_| f())
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn weight(&self, data: &[f32], k: usize, n: usize, transposed: bool) -> Result<CpuMat> {
        Ok(CpuMat::new(data, k, n, transposed))
    }

    fn matmul_into(
        &self,
        x: &Vec<f32>,
        m: usize,
        w: &CpuMat,
        bias: Option<&Vec<f32>>,
        epilogue: Epilogue,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        matmul::matmul_into(x, m, w, bias.map(Vec::as_slice), epilogue, out);
        Ok(())
    }

    fn add_assign(&self, x: &mut Vec<f32>, y: &Vec<f32>) -> Result<()> {
        kernels::add_assign(x, y);
        Ok(())
    }

    fn activate(&self, x: &mut Vec<f32>, act: Act) -> Result<()> {
        kernels::activate(x, act);
        Ok(())
    }

    fn layer_norm(&self, x: &Vec<f32>, cols: usize, gamma: &Vec<f32>, beta: &Vec<f32>, eps: f32) -> Result<Vec<f32>> {
        let mut out = vec![0.0; x.len()];
        kernels::layer_norm(x, cols, gamma, beta, eps, &mut out);
        Ok(out)
    }

    fn layer_norm_into(
        &self,
        x: &Vec<f32>,
        rows: usize,
        cols: usize,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        kernels::layer_norm(&x[..rows * cols], cols, gamma, beta, eps, &mut out[..rows * cols]);
        Ok(())
    }

    fn gather(&self, table: &Vec<f32>, cols: usize, ids: &[u32]) -> Result<Vec<f32>> {
        let mut out = vec![0.0; ids.len() * cols];
        self.gather_into(table, cols, ids, &mut out)?;
        Ok(out)
    }

    fn gather_into(&self, table: &Vec<f32>, cols: usize, ids: &[u32], out: &mut Vec<f32>) -> Result<()> {
        for (row, &id) in out.chunks_exact_mut(cols).zip(ids) {
            let id = id as usize;
            row.copy_from_slice(&table[id * cols..(id + 1) * cols]);
        }
        Ok(())
    }

    fn add_gathered(&self, x: &mut Vec<f32>, table: &Vec<f32>, cols: usize, ids: &[u32]) -> Result<()> {
        for (row, &id) in x.chunks_exact_mut(cols).zip(ids) {
            let id = id as usize;
            kernels::add_assign(row, &table[id * cols..(id + 1) * cols]);
        }
        Ok(())
    }

    fn columns(&self, x: &Vec<f32>, cols: usize, from: usize, width: usize) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(x.len() / cols * width);
        for row in x.chunks_exact(cols) {
            out.extend_from_slice(&row[from..from + width]);
        }
        Ok(out)
    }

    fn write_rows(&self, dst: &mut Vec<f32>, cols: usize, at: usize, src: &Vec<f32>) -> Result<()> {
        dst[at * cols..at * cols + src.len()].copy_from_slice(src);
        Ok(())
    }

    fn copy(&self, src: &Vec<f32>, from: usize, dst: &mut Vec<f32>, to: usize, len: usize) -> Result<()> {
        dst[to..to + len].copy_from_slice(&src[from..from + len]);
        Ok(())
    }

    fn attention(&self, q: &Vec<f32>, k: &Vec<f32>, v: &Vec<f32>, s: &Attention<'_>) -> Result<Vec<f32>> {
        let hidden = s.heads * s.head_dim;
        let mut out = vec![0.0; s.batch * s.q_len * hidden];
        let longest = s.kv_len.iter().copied().max().unwrap_or(0);
        // Output slice `i` is query row `i / heads`, head `i % heads`.
        kernels::attention_slices(&mut out, s.head_dim, longest * s.head_dim * 2, |i| {
            let (row, h) = (i / s.heads, i % s.heads);
            let (b, qi) = (row / s.q_len, row % s.q_len);
            let visible = match s.causal {
                Some(offset) => (offset + qi + 1).min(s.kv_len[b]),
                None => s.kv_len[b],
            };
            let col = h * s.head_dim;
            let q = &q[row * hidden + col..][..s.head_dim];
            let keys = kernels::Keys { k, v, base: b * s.kv_stride * hidden + col, stride: hidden, visible };
            (q, keys)
        });
        Ok(out)
    }

    fn attention_step(
        &self,
        qkv: &Vec<f32>,
        caches: &[KvCache<Self>],
        layer: usize,
        heads: usize,
        head_dim: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let hidden = heads * head_dim;
        let longest = caches.iter().map(|c| c.len).max().unwrap_or(0);
        kernels::attention_slices(&mut out[..caches.len() * hidden], head_dim, longest * head_dim * 2, |i| {
            let (b, h) = (i / heads, i % heads);
            let col = h * head_dim;
            let q = &qkv[b * 3 * hidden + col..][..head_dim];
            let c = &caches[b];
            let keys =
                kernels::Keys { k: &c.keys[layer], v: &c.values[layer], base: col, stride: hidden, visible: c.len };
            (q, keys)
        });
        Ok(())
    }

    fn mean_pool(&self, x: &Vec<f32>, len: usize, cols: usize, lens: &[usize]) -> Result<Vec<f32>> {
        let mut out = vec![0.0; lens.len() * cols];
        out.par_chunks_exact_mut(cols).zip(lens).enumerate().for_each(|(b, (o, &n))| {
            for row in x[b * len * cols..].chunks_exact(cols).take(n) {
                kernels::add_assign(o, row);
            }
            let n = n.max(1) as f32;
            o.iter_mut().for_each(|a| *a /= n);
        });
        Ok(out)
    }

    fn l2_normalize(&self, x: &mut Vec<f32>, cols: usize) -> Result<()> {
        kernels::l2_normalize(x, cols);
        Ok(())
    }

    fn row(&self, x: &Vec<f32>, cols: usize, row: usize) -> Result<Vec<f32>> {
        Ok(x[row * cols..(row + 1) * cols].to_vec())
    }

    fn sample_row(
        &self,
        logits: &Vec<f32>,
        cols: usize,
        row: usize,
        params: &super::sample::Params,
        uniform: f32,
    ) -> Result<u32> {
        Ok(super::sample::pick(&logits[row * cols..(row + 1) * cols], params, uniform))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_a_naive_product_in_both_weight_layouts() {
        let (m, k, n) = (3, 4, 5);
        let x: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 2.0).collect();
        let w: Vec<f32> = (0..k * n).map(|i| (i as f32).sin()).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let got = Cpu.matmul(&x, m, &Cpu.weight(&w, k, n, false).unwrap(), Some(&bias), None).unwrap();
        let wt: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
        let got_t = Cpu.matmul(&x, m, &Cpu.weight(&wt, k, n, true).unwrap(), Some(&bias), None).unwrap();
        for r in 0..m {
            for c in 0..n {
                let want: f32 = (0..k).map(|i| x[r * k + i] * w[i * n + c]).sum::<f32>() + bias[c];
                assert!((got[r * n + c] - want).abs() < 1e-5);
                assert!((got_t[r * n + c] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn causal_attention_sees_only_the_past() {
        // One head of width 1: with equal scores, each output is the mean of the visible values.
        let q = vec![0.0; 3];
        let k = vec![0.0; 3];
        let v = vec![1.0, 2.0, 6.0];
        let shape =
            Attention { batch: 1, q_len: 3, kv_stride: 3, kv_len: &[3], heads: 1, head_dim: 1, causal: Some(0) };
        assert_eq!(Cpu.attention(&q, &k, &v, &shape).unwrap(), vec![1.0, 1.5, 3.0]);
        let shape = Attention { causal: None, kv_len: &[2], ..shape };
        assert_eq!(Cpu.attention(&q, &k, &v, &shape).unwrap(), vec![1.5, 1.5, 1.5]);
    }

    #[test]
    fn a_decode_step_attends_each_row_to_its_own_cache() {
        // Two sequences, one head of width 2; row b's query is [1, 0] and its cache holds b + 2 keys.
        let (heads, d, hidden) = (1, 2, 2);
        let cache = |len: usize, scale: f32| KvCache::<Cpu> {
            keys: vec![(0..8).map(|i| i as f32 * 0.1).collect()],
            values: vec![(0..8).map(|i| i as f32 * scale).collect()],
            len,
        };
        let caches = [cache(2, 1.0), cache(3, -1.0)];
        let qkv = vec![1.0, 0.0, 9.0, 9.0, 9.0, 9.0, 1.0, 0.0, 9.0, 9.0, 9.0, 9.0];
        let mut out = vec![0.0; 2 * hidden];
        Cpu.attention_step(&qkv, &caches, 0, heads, d, &mut out).unwrap();
        for (b, c) in caches.iter().enumerate() {
            let k = &c.keys[0];
            let scores: Vec<f32> = (0..c.len).map(|j| k[j * 2] / 2f32.sqrt()).collect();
            let max = scores.iter().copied().fold(f32::MIN, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f32 = e.iter().sum();
            for col in 0..d {
                let want: f32 = (0..c.len).map(|j| e[j] / total * c.values[0][j * 2 + col]).sum();
                assert!((out[b * hidden + col] - want).abs() < 1e-6, "row {b}: {} vs {want}", out[b * hidden + col]);
            }
        }
    }
}
