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

/// What a matrix product does with its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// `out = act(x · w + bias)`.
    Store(Option<Act>),
    /// `out += x · w + bias`: a residual connection, added in the same pass.
    Add,
}

/// The shape of a prepared weight matrix: `k` inputs to `n` outputs.
pub trait MatShape {
    fn k(&self) -> usize;
    fn n(&self) -> usize;
}

/// One sequence's keys and values, per layer, sized for the whole context window: row `p` of
/// `keys[layer]` is position `p`'s key. Only the first `len` rows hold anything.
pub struct KvCache<B: Backend + ?Sized> {
    pub keys: Vec<B::Buf>,
    pub values: Vec<B::Buf>,
    /// Positions filled so far.
    pub len: usize,
}

impl<B: Backend> fmt::Debug for KvCache<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvCache").field("layers", &self.keys.len()).field("len", &self.len).finish()
    }
}

/// A device the models run on.
///
/// Operations come in two forms: ones that return a new buffer (simple to compose; the encoder and
/// a prompt's first pass use them) and `_into` ones that write into a buffer the caller keeps, over
/// the first `rows` rows of it, so that the decode loop allocates nothing per token.
pub trait Backend: Send + Sync + 'static {
    /// A buffer of `f32` on the device.
    type Buf: Send + Sync + 'static;
    /// A weight matrix, laid out once at load time as this device's products read it fastest.
    type Mat: MatShape + Send + Sync + 'static;

    /// "cpu" or "cuda:N (device name)".
    fn describe(&self) -> String;
    /// Runs one piece of model work (a batch, a prompt, a decode step) where this device wants its
    /// host side to run: the CPU moves it onto its thread pool; a GPU runs it where it is.
    fn compute<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    fn zeros(&self, len: usize) -> Result<Self::Buf>;

    /// Prepares a weight mapping `k` inputs to `n` outputs from `data`, stored `[k, n]` or, when
    /// `transposed`, `[n, k]` (PyTorch's `Linear` stores `[out, in]`; GPT-2's `Conv1D` `[in, out]`).
    fn weight(&self, data: &[f32], k: usize, n: usize, transposed: bool) -> Result<Self::Mat>;

    /// `x[m, k] · w + bias` into the first `m` rows of `out` (`[≥ m, n]`), as `epilogue` says.
    fn matmul_into(
        &self,
        x: &Self::Buf,
        m: usize,
        w: &Self::Mat,
        bias: Option<&Self::Buf>,
        epilogue: Epilogue,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// `act(x[m, k] · w + bias)` as a new `[m, n]` buffer.
    fn matmul(
        &self,
        x: &Self::Buf,
        m: usize,
        w: &Self::Mat,
        bias: Option<&Self::Buf>,
        act: Option<Act>,
    ) -> Result<Self::Buf> {
        let mut out = self.zeros(m * w.n())?;
        self.matmul_into(x, m, w, bias, Epilogue::Store(act), &mut out)?;
        Ok(out)
    }

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
    /// Layer norm of the first `rows` rows of `x` into the first `rows` rows of `out`.
    #[expect(clippy::too_many_arguments, reason = "a layer norm's operands, extents and output")]
    fn layer_norm_into(
        &self,
        x: &Self::Buf,
        rows: usize,
        cols: usize,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// `out[i] = table[ids[i]]` for a table of `cols`-wide rows.
    fn gather(&self, table: &Self::Buf, cols: usize, ids: &[u32]) -> Result<Self::Buf>;
    /// [`Backend::gather`] into the first `ids.len()` rows of `out`.
    fn gather_into(&self, table: &Self::Buf, cols: usize, ids: &[u32], out: &mut Self::Buf) -> Result<()>;
    /// `x[i] += table[ids[i]]` (position and token-type embeddings), for the first `ids.len()` rows.
    fn add_gathered(&self, x: &mut Self::Buf, table: &Self::Buf, cols: usize, ids: &[u32]) -> Result<()>;
    /// Columns `from..from + width` of `x[rows, cols]`, as a new `[rows, width]` buffer.
    fn columns(&self, x: &Self::Buf, cols: usize, from: usize, width: usize) -> Result<Self::Buf>;
    /// Copies `src[rows, cols]` into `dst` starting at row `at` (appending to a KV cache).
    fn write_rows(&self, dst: &mut Self::Buf, cols: usize, at: usize, src: &Self::Buf) -> Result<()>;
    /// Copies `len` floats from `src` at `from` to `dst` at `to`.
    fn copy(&self, src: &Self::Buf, from: usize, dst: &mut Self::Buf, to: usize, len: usize) -> Result<()>;
    /// Scaled dot-product attention, softmax over the visible keys; returns `[batch * q_len, hidden]`.
    fn attention(&self, q: &Self::Buf, k: &Self::Buf, v: &Self::Buf, shape: &Attention<'_>) -> Result<Self::Buf>;
    /// One decode step's attention for `caches.len()` sequences: row `b` of `qkv` (`[rows, 3 ·
    /// hidden]`, queries first) attends to the first `caches[b].len` keys and values of layer
    /// `layer` of its own cache; the result goes to row `b` of `out` (`[rows, hidden]`).
    fn attention_step(
        &self,
        qkv: &Self::Buf,
        caches: &[KvCache<Self>],
        layer: usize,
        heads: usize,
        head_dim: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// The mean of the first `lens[b]` rows of each `[len, cols]` block of `x`; `[batch, cols]`.
    fn mean_pool(&self, x: &Self::Buf, len: usize, cols: usize, lens: &[usize]) -> Result<Self::Buf>;
    /// Divides each row by its L2 norm (clamped as PyTorch's `normalize` does, at 1e-12).
    fn l2_normalize(&self, x: &mut Self::Buf, cols: usize) -> Result<()>;
    /// Row `row` of `x[rows, cols]` alone (the last position, whose logits choose the next token).
    fn row(&self, x: &Self::Buf, cols: usize, row: usize) -> Result<Self::Buf> {
        let mut out = self.zeros(cols)?;
        self.copy(x, row * cols, &mut out, 0, cols)?;
        Ok(out)
    }
    /// Picks the next token from row `row` of `logits[rows, cols]`. The default brings the row to
    /// the host; a device may override the cases it can do in place, so only the id crosses back.
    fn sample_row(
        &self,
        logits: &Self::Buf,
        cols: usize,
        row: usize,
        params: &crate::worker::sample::Params,
        uniform: f32,
    ) -> Result<u32> {
        let logits = self.download(&self.row(logits, cols, row)?)?;
        Ok(crate::worker::sample::pick(&logits, params, uniform))
    }
}
