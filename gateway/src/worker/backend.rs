//! The tensor operations the models are written against, implemented once per device: `cpu.rs`
//! (always built) and `cuda.rs` (cuBLAS + NVRTC kernels, loaded at run time).
//!
//! Activations are row-major matrices of `f32` (`[rows, cols]`); a batch of sequences is padded to one
//! length and flattened to `[batch * len, cols]`. Only the operations BERT, GPT-2 and an MLP need.

use std::fmt;

/// An error from a device: a failed allocation, launch or copy.
#[derive(Debug)]
pub struct DeviceError(pub String);

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeviceError {}

pub type Result<T> = std::result::Result<T, DeviceError>;

/// An element-wise activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// GELU with the exact error function (BERT's `gelu`).
    GeluErf,
    /// GELU's tanh approximation (GPT-2's `gelu_new`).
    GeluTanh,
    Relu,
    Tanh,
    Sigmoid,
}

impl Act {
    /// The activation named in a Hugging Face `config.json` (`hidden_act`, `activation_function`).
    pub fn from_hf(name: &str) -> Option<Act> {
        match name {
            "gelu" => Some(Act::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Act::GeluTanh),
            "relu" => Some(Act::Relu),
            "tanh" => Some(Act::Tanh),
            "sigmoid" => Some(Act::Sigmoid),
            _ => None,
        }
    }

    /// The scalar function, shared by the CPU path and the tests.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Act::GeluErf => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
            Act::GeluTanh => {
                let c = (2.0 / std::f32::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044_715 * x * x * x)).tanh())
            }
            Act::Relu => x.max(0.0),
            Act::Tanh => x.tanh(),
            Act::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }
    }
}

/// The shape of one attention call. `q` is `[batch * q_len, heads * head_dim]`; `k` and `v` are
/// `[batch * kv_stride, heads * head_dim]`, of which the first `kv_len[b]` rows of each batch entry
/// are keys. With `causal = Some(offset)`, query `i` (at absolute position `offset + i`) sees keys
/// `0..=offset + i` only.
#[derive(Debug, Clone)]
pub struct Attention<'a> {
    pub batch: usize,
    pub q_len: usize,
    pub kv_stride: usize,
    pub kv_len: &'a [usize],
    pub heads: usize,
    pub head_dim: usize,
    pub causal: Option<usize>,
}

/// A device the models run on.
pub trait Backend: Send + Sync + 'static {
    /// A buffer of `f32` on the device.
    type Buf: Send + Sync + 'static;

    /// "cpu" or "cuda:N (device name)".
    fn describe(&self) -> String;
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    fn zeros(&self, len: usize) -> Result<Self::Buf>;

    /// `x[m, k] · w + bias`, where `w` is `[k, n]`, or `[n, k]` read transposed when `w_transposed`
    /// (PyTorch's `Linear` stores `[out, in]`; GPT-2's `Conv1D` stores `[in, out]`).
    #[expect(clippy::too_many_arguments, reason = "a GEMM's operands, sizes and layout")]
    fn matmul(
        &self,
        x: &Self::Buf,
        m: usize,
        k: usize,
        w: &Self::Buf,
        n: usize,
        w_transposed: bool,
        bias: Option<&Self::Buf>,
    ) -> Result<Self::Buf>;
    /// `x += y`, element-wise.
    fn add_assign(&self, x: &mut Self::Buf, y: &Self::Buf) -> Result<()>;
    fn activate(&self, x: &mut Self::Buf, act: Act) -> Result<()>;
    /// Layer norm over each row of `x[rows, cols]`.
    fn layer_norm(
        &self,
        x: &Self::Buf,
        cols: usize,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        eps: f32,
    ) -> Result<Self::Buf>;
    /// `out[i] = table[ids[i]]` for a table of `cols`-wide rows.
    fn gather(&self, table: &Self::Buf, cols: usize, ids: &[u32]) -> Result<Self::Buf>;
    /// `x[i] += table[ids[i]]` (position and token-type embeddings).
    fn add_gathered(&self, x: &mut Self::Buf, table: &Self::Buf, cols: usize, ids: &[u32]) -> Result<()>;
    /// Columns `from..from + width` of `x[rows, cols]`, as a new `[rows, width]` buffer.
    fn columns(&self, x: &Self::Buf, cols: usize, from: usize, width: usize) -> Result<Self::Buf>;
    /// Copies `src[rows, cols]` into `dst` starting at row `at` (appending to a KV cache).
    fn write_rows(&self, dst: &mut Self::Buf, cols: usize, at: usize, src: &Self::Buf) -> Result<()>;
    /// Scaled dot-product attention, softmax over the visible keys; returns `[batch * q_len, hidden]`.
    fn attention(&self, q: &Self::Buf, k: &Self::Buf, v: &Self::Buf, shape: &Attention<'_>) -> Result<Self::Buf>;
    /// The mean of the first `lens[b]` rows of each `[len, cols]` block of `x`; `[batch, cols]`.
    fn mean_pool(&self, x: &Self::Buf, len: usize, cols: usize, lens: &[usize]) -> Result<Self::Buf>;
    /// Divides each row by its L2 norm (clamped as PyTorch's `normalize` does, at 1e-12).
    fn l2_normalize(&self, x: &mut Self::Buf, cols: usize) -> Result<()>;
    /// Row `row` of `x[rows, cols]` alone (the last position, whose logits choose the next token).
    fn row(&self, x: &Self::Buf, cols: usize, row: usize) -> Result<Self::Buf> {
        let mut out = self.zeros(cols)?;
        let all = self.download(x)?;
        let one = self.upload(&all[row * cols..(row + 1) * cols])?;
        self.write_rows(&mut out, cols, 0, &one)?;
        Ok(out)
    }
    /// Picks the next token from a row of logits. The default brings the logits to the host; a
    /// device may override the cases it can do in place, so only the id crosses back.
    fn sample(&self, logits: &Self::Buf, params: &crate::worker::sample::Params, uniform: f32) -> Result<u32> {
        let logits = self.download(logits)?;
        Ok(crate::worker::sample::pick(&logits, params, uniform))
    }
}
