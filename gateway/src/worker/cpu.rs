//! The CPU backend: plain `Vec<f32>` buffers, matrix products by `matrixmultiply` (multithreaded
//! through its `threading` feature; `MATMUL_NUM_THREADS` caps it), everything else in simple loops.

use super::backend::{Act, Attention, Backend, Result};

/// The CPU. Always available.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cpu;

impl Backend for Cpu {
    type Buf = Vec<f32>;

    fn describe(&self) -> String {
        "cpu".into()
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

    fn matmul(
        &self,
        x: &Vec<f32>,
        m: usize,
        k: usize,
        w: &Vec<f32>,
        n: usize,
        w_transposed: bool,
        bias: Option<&Vec<f32>>,
    ) -> Result<Vec<f32>> {
        let mut out = match bias {
            Some(b) => {
                assert_eq!(b.len(), n, "bias width");
                let mut out = Vec::with_capacity(m * n);
                for _ in 0..m {
                    out.extend_from_slice(b);
                }
                out
            }
            None => vec![0.0; m * n],
        };
        let (rsw, csw) = if w_transposed { (1, k) } else { (n, 1) };
        gemm(m, k, n, x, (k, 1), w, (rsw, csw), &mut out, if bias.is_some() { 1.0 } else { 0.0 });
        Ok(out)
    }

    fn add_assign(&self, x: &mut Vec<f32>, y: &Vec<f32>) -> Result<()> {
        assert_eq!(x.len(), y.len(), "add_assign lengths");
        x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn activate(&self, x: &mut Vec<f32>, act: Act) -> Result<()> {
        x.iter_mut().for_each(|v| *v = act.apply(*v));
        Ok(())
    }

    fn layer_norm(&self, x: &Vec<f32>, cols: usize, gamma: &Vec<f32>, beta: &Vec<f32>, eps: f32) -> Result<Vec<f32>> {
        let mut out = vec![0.0; x.len()];
        for (row, o) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
            let mean = row.iter().sum::<f32>() / cols as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / cols as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for i in 0..cols {
                o[i] = (row[i] - mean) * inv * gamma[i] + beta[i];
            }
        }
        Ok(out)
    }

    fn gather(&self, table: &Vec<f32>, cols: usize, ids: &[u32]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(ids.len() * cols);
        for &id in ids {
            let id = id as usize;
            out.extend_from_slice(&table[id * cols..(id + 1) * cols]);
        }
        Ok(out)
    }

    fn add_gathered(&self, x: &mut Vec<f32>, table: &Vec<f32>, cols: usize, ids: &[u32]) -> Result<()> {
        for (row, &id) in x.chunks_exact_mut(cols).zip(ids) {
            let id = id as usize;
            row.iter_mut().zip(&table[id * cols..(id + 1) * cols]).for_each(|(a, b)| *a += b);
        }
        Ok(())
    }

    fn columns(&self, x: &Vec<f32>, cols: usize, from: usize, width: usize) -> Result<Vec<f32>> {
        Ok(x.chunks_exact(cols).flat_map(|row| &row[from..from + width]).copied().collect())
    }

    fn write_rows(&self, dst: &mut Vec<f32>, cols: usize, at: usize, src: &Vec<f32>) -> Result<()> {
        dst[at * cols..at * cols + src.len()].copy_from_slice(src);
        Ok(())
    }

    fn attention(&self, q: &Vec<f32>, k: &Vec<f32>, v: &Vec<f32>, s: &Attention<'_>) -> Result<Vec<f32>> {
        let hidden = s.heads * s.head_dim;
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let mut out = vec![0.0; s.batch * s.q_len * hidden];
        let mut scores = Vec::new();
        for b in 0..s.batch {
            for h in 0..s.heads {
                let col = h * s.head_dim;
                for i in 0..s.q_len {
                    let visible = match s.causal {
                        Some(offset) => (offset + i + 1).min(s.kv_len[b]),
                        None => s.kv_len[b],
                    };
                    let qi = &q[(b * s.q_len + i) * hidden + col..][..s.head_dim];
                    scores.clear();
                    let mut max = f32::NEG_INFINITY;
                    for j in 0..visible {
                        let kj = &k[(b * s.kv_stride + j) * hidden + col..][..s.head_dim];
                        let dot = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                        max = max.max(dot);
                        scores.push(dot);
                    }
                    let mut sum = 0.0;
                    for p in scores.iter_mut() {
                        *p = (*p - max).exp();
                        sum += *p;
                    }
                    let o = &mut out[(b * s.q_len + i) * hidden + col..][..s.head_dim];
                    for (j, p) in scores.iter().enumerate() {
                        let vj = &v[(b * s.kv_stride + j) * hidden + col..][..s.head_dim];
                        let w = p / sum;
                        o.iter_mut().zip(vj).for_each(|(a, b)| *a += w * b);
                    }
                }
            }
        }
        Ok(out)
    }

    fn mean_pool(&self, x: &Vec<f32>, len: usize, cols: usize, lens: &[usize]) -> Result<Vec<f32>> {
        let mut out = vec![0.0; lens.len() * cols];
        for (b, &n) in lens.iter().enumerate() {
            let o = &mut out[b * cols..(b + 1) * cols];
            for row in x[b * len * cols..].chunks_exact(cols).take(n) {
                o.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            let n = n.max(1) as f32;
            o.iter_mut().for_each(|a| *a /= n);
        }
        Ok(out)
    }

    fn l2_normalize(&self, x: &mut Vec<f32>, cols: usize) -> Result<()> {
        for row in x.chunks_exact_mut(cols) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v /= norm);
        }
        Ok(())
    }

    fn row(&self, x: &Vec<f32>, cols: usize, row: usize) -> Result<Vec<f32>> {
        Ok(x[row * cols..(row + 1) * cols].to_vec())
    }
}

/// `c[m, n] = a[m, k] · b[k, n] + beta · c`, each operand given with its (row, column) strides.
#[expect(clippy::too_many_arguments, reason = "a GEMM's operands and strides")]
fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    c: &mut [f32],
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.iter_mut().for_each(|v| *v *= beta);
        return;
    }
    // Every element the product touches must lie inside its slice: this is what makes the raw
    // pointer call below sound.
    assert!((m - 1) * rsa + (k - 1) * csa < a.len(), "gemm: a is too short");
    assert!((k - 1) * rsb + (n - 1) * csb < b.len(), "gemm: b is too short");
    assert!(m * n <= c.len(), "gemm: c is too short");
    let strides = [rsa, csa, rsb, csb, n].map(|s| isize::try_from(s).expect("stride fits isize"));
    #[expect(unsafe_code, reason = "matrixmultiply takes raw pointers; the bounds are asserted above")]
    // SAFETY: the asserts above keep every read of `a`, `b` and every write of `c` in bounds, and
    // `c` is borrowed mutably so it aliases neither input.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            strides[0],
            strides[1],
            b.as_ptr(),
            strides[2],
            strides[3],
            beta,
            c.as_mut_ptr(),
            strides[4],
            1,
        );
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
        let got = Cpu.matmul(&x, m, k, &w, n, false, Some(&bias)).unwrap();
        let wt: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
        let got_t = Cpu.matmul(&x, m, k, &wt, n, true, Some(&bias)).unwrap();
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
}
