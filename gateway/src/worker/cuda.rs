//! The CUDA backend, through cudarc: cuBLAS for the matrix products, small kernels compiled at start
//! by NVRTC for everything else (layer norm, activations, attention with its softmax, embedding
//! lookups, pooling, token choice). The driver, cuBLAS and NVRTC are loaded at run time, so the same
//! binary builds and starts where no CUDA is installed; [`Cuda::new`] then says why it cannot run.
//!
//! Weights are uploaded once; activations stay on the device; for a generated token only the chosen
//! id crosses back (greedy and plain temperature sampling run on the device; top-k / top-p bring the
//! logits row to the host).

use std::sync::Arc;

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys::cublasOperation_t};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::backend::{Act, Attention, Backend, DeviceError, Epilogue, KvCache, MatShape, Result};
use super::sample::Params;

const KERNELS: &str = r#"
extern "C" __global__ void add_assign(float* x, const float* y, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

extern "C" __global__ void activate(float* x, unsigned int n, int kind) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    switch (kind) {
        case 0: v = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); break;
        case 1: v = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v))); break;
        case 2: v = fmaxf(v, 0.0f); break;
        case 3: v = tanhf(v); break;
        default: v = 1.0f / (1.0f + expf(-v)); break;
    }
    x[i] = v;
}

// Block-wide sum of one value per thread; blockDim.x is a power of two up to 1024.
__device__ float block_sum(float v, float* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    float r = shared[0];
    __syncthreads();
    return r;
}

__device__ float block_max(float v, float* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] = fmaxf(shared[threadIdx.x], shared[threadIdx.x + s]);
        __syncthreads();
    }
    float r = shared[0];
    __syncthreads();
    return r;
}

// One block per row.
extern "C" __global__ void layer_norm(const float* x, float* out, unsigned int cols, const float* g, const float* b, float eps) {
    __shared__ float shared[1024];
    const float* row = x + (size_t)blockIdx.x * cols;
    float* o = out + (size_t)blockIdx.x * cols;
    float s = 0.0f;
    for (unsigned int i = threadIdx.x; i < cols; i += blockDim.x) s += row[i];
    float mean = block_sum(s, shared) / cols;
    float v = 0.0f;
    for (unsigned int i = threadIdx.x; i < cols; i += blockDim.x) { float d = row[i] - mean; v += d * d; }
    float inv = rsqrtf(block_sum(v, shared) / cols + eps);
    for (unsigned int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = (row[i] - mean) * inv * g[i] + b[i];
}

extern "C" __global__ void gather(const float* table, const unsigned int* ids, float* out, unsigned int cols, unsigned int rows) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * cols) return;
    size_t r = i / cols, c = i % cols;
    out[i] = table[(size_t)ids[r] * cols + c];
}

extern "C" __global__ void add_gathered(float* x, const float* table, const unsigned int* ids, unsigned int cols, unsigned int rows) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * cols) return;
    size_t r = i / cols, c = i % cols;
    x[i] += table[(size_t)ids[r] * cols + c];
}

extern "C" __global__ void columns(const float* x, float* out, unsigned int rows, unsigned int cols, unsigned int from, unsigned int width) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * width) return;
    size_t r = i / width, c = i % width;
    out[i] = x[r * cols + from + c];
}

extern "C" __global__ void fill_rows(float* out, const float* bias, unsigned int rows, unsigned int cols) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)rows * cols) out[i] = bias[i % cols];
}

extern "C" __global__ void add_rows(float* out, const float* bias, unsigned int rows, unsigned int cols) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)rows * cols) out[i] += bias[i % cols];
}

// One block per (query, head, batch entry); the scores live in dynamic shared memory (kv_stride floats).
extern "C" __global__ void attention(const float* q, const float* k, const float* v, float* out,
        unsigned int q_len, unsigned int kv_stride, const unsigned int* kv_len, unsigned int heads,
        unsigned int head_dim, int causal_offset) {
    extern __shared__ float scores[];
    __shared__ float shared[1024];
    unsigned int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    unsigned int hidden = heads * head_dim;
    unsigned int visible = kv_len[b];
    if (causal_offset >= 0 && (unsigned int)causal_offset + i + 1 < visible) visible = causal_offset + i + 1;
    const float* qi = q + ((size_t)b * q_len + i) * hidden + h * head_dim;
    float scale = rsqrtf((float)head_dim);
    float local_max = -INFINITY;
    for (unsigned int j = threadIdx.x; j < visible; j += blockDim.x) {
        const float* kj = k + ((size_t)b * kv_stride + j) * hidden + h * head_dim;
        float dot = 0.0f;
        for (unsigned int d = 0; d < head_dim; d++) dot += qi[d] * kj[d];
        dot *= scale;
        scores[j] = dot;
        local_max = fmaxf(local_max, dot);
    }
    float max = block_max(local_max, shared);
    float local_sum = 0.0f;
    for (unsigned int j = threadIdx.x; j < visible; j += blockDim.x) {
        float p = expf(scores[j] - max);
        scores[j] = p;
        local_sum += p;
    }
    float sum = block_sum(local_sum, shared);
    float* o = out + ((size_t)b * q_len + i) * hidden + h * head_dim;
    for (unsigned int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.0f;
        for (unsigned int j = 0; j < visible; j++) acc += scores[j] * v[((size_t)b * kv_stride + j) * hidden + h * head_dim + d];
        o[d] = acc / sum;
    }
}

// One block per batch entry.
extern "C" __global__ void mean_pool(const float* x, float* out, unsigned int len, unsigned int cols, const unsigned int* lens) {
    unsigned int b = blockIdx.x;
    unsigned int n = lens[b];
    for (unsigned int c = threadIdx.x; c < cols; c += blockDim.x) {
        float s = 0.0f;
        for (unsigned int r = 0; r < n; r++) s += x[((size_t)b * len + r) * cols + c];
        out[(size_t)b * cols + c] = s / (float)(n > 0 ? n : 1);
    }
}

// One block per row.
extern "C" __global__ void l2_normalize(float* x, unsigned int cols) {
    __shared__ float shared[1024];
    float* row = x + (size_t)blockIdx.x * cols;
    float s = 0.0f;
    for (unsigned int i = threadIdx.x; i < cols; i += blockDim.x) s += row[i] * row[i];
    float norm = fmaxf(sqrtf(block_sum(s, shared)), 1e-12f);
    for (unsigned int i = threadIdx.x; i < cols; i += blockDim.x) row[i] /= norm;
}

// One block: greedy (temperature <= 0) takes the first largest logit; otherwise samples from
// softmax(logits / temperature) with the uniform draw u.
extern "C" __global__ void choose(const float* logits, unsigned int n, float temperature, float u, unsigned int* out) {
    __shared__ float shared[1024];
    __shared__ unsigned int index[1024];
    float best = -INFINITY;
    unsigned int best_i = 0xffffffffu;
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) {
        if (logits[i] > best) { best = logits[i]; best_i = i; }
    }
    shared[threadIdx.x] = best;
    index[threadIdx.x] = best_i;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float o = shared[threadIdx.x + s];
            unsigned int oi = index[threadIdx.x + s];
            if (o > shared[threadIdx.x] || (o == shared[threadIdx.x] && oi < index[threadIdx.x])) {
                shared[threadIdx.x] = o;
                index[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    float max = shared[0];
    unsigned int argmax = index[0];
    __syncthreads();
    if (temperature <= 0.0f) {
        if (threadIdx.x == 0) *out = argmax;
        return;
    }
    float local = 0.0f;
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) local += expf((logits[i] - max) / temperature);
    float sum = block_sum(local, shared);
    if (threadIdx.x == 0) {
        float target = u * sum, acc = 0.0f;
        unsigned int pick = n - 1;
        for (unsigned int i = 0; i < n; i++) {
            acc += expf((logits[i] - max) / temperature);
            if (target < acc) { pick = i; break; }
        }
        *out = pick;
    }
}
"#;

const NAMES: [&str; 12] = [
    "add_assign",
    "activate",
    "layer_norm",
    "gather",
    "add_gathered",
    "columns",
    "fill_rows",
    "add_rows",
    "attention",
    "mean_pool",
    "l2_normalize",
    "choose",
];

/// A CUDA device with its stream, cuBLAS handle and compiled kernels.
pub struct Cuda {
    ordinal: usize,
    name: String,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Vec<CudaFunction>,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda").field("ordinal", &self.ordinal).field("name", &self.name).finish_non_exhaustive()
    }
}

fn err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> DeviceError + '_ {
    move |e| DeviceError(format!("CUDA {what}: {e}"))
}

/// Whether the CUDA driver, cuBLAS and NVRTC libraries can be loaded (cudarc panics on first use
/// of a library that is missing, so this is asked first).
fn libraries_present() -> std::result::Result<(), String> {
    #[expect(unsafe_code, reason = "cudarc's presence checks are unsafe fns that only try to dlopen the libraries")]
    // SAFETY: each call only attempts `dlopen` of the library's candidate names and closes it again.
    let (driver, blas, nvrtc) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
        )
    };
    match (driver, blas, nvrtc) {
        (true, true, true) => Ok(()),
        (false, _, _) => Err("the CUDA driver (libcuda) is not installed".into()),
        (_, false, _) => Err("CUDA's cuBLAS library (libcublas) is not installed".into()),
        (_, _, false) => Err("CUDA's NVRTC library (libnvrtc) is not installed".into()),
    }
}

impl Cuda {
    /// Opens CUDA device `ordinal`, compiles the kernels and creates the cuBLAS handle. Fails with a
    /// sentence saying why where CUDA is not installed or no such GPU exists.
    pub fn new(ordinal: usize) -> std::result::Result<Self, String> {
        libraries_present().map_err(|why| format!("CUDA is not available: {why}"))?;
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("CUDA is not available: no device {ordinal} ({e})"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let stream = ctx.default_stream();
        let ptx = cudarc::nvrtc::compile_ptx(KERNELS).map_err(|e| format!("CUDA kernels did not compile: {e}"))?;
        let module = ctx.load_module(ptx).map_err(|e| format!("CUDA kernels did not load: {e}"))?;
        let kernels = NAMES
            .iter()
            .map(|n| module.load_function(n).map_err(|e| format!("CUDA kernel {n}: {e}")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("cuBLAS did not start: {e}"))?;
        Ok(Self { ordinal, name, stream, blas, kernels })
    }

    fn kernel(&self, name: &str) -> &CudaFunction {
        let i = NAMES.iter().position(|n| *n == name).expect("a known kernel");
        &self.kernels[i]
    }

    fn ids(&self, ids: &[u32]) -> Result<CudaSlice<u32>> {
        self.stream.clone_htod(ids).map_err(err("copy"))
    }
}

/// A weight on the GPU, as the checkpoint stored it: cuBLAS reads either layout at the same speed,
/// so nothing is rearranged.
pub struct CudaMat {
    k: usize,
    n: usize,
    /// Stored `[n, k]` rather than `[k, n]`.
    transposed: bool,
    w: CudaSlice<f32>,
}

impl std::fmt::Debug for CudaMat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaMat").field("k", &self.k).field("n", &self.n).finish_non_exhaustive()
    }
}

impl MatShape for CudaMat {
    fn k(&self) -> usize {
        self.k
    }
    fn n(&self) -> usize {
        self.n
    }
}

/// A launch over `n` elements, 256 threads a block.
fn linear(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: ((n as u32).div_ceil(256).max(1), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn rows(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// Launches a kernel; the one place device code is started.
macro_rules! launch {
    ($self:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let mut builder = $self.stream.launch_builder($self.kernel($name));
        $( builder.arg($arg); )*
        #[expect(unsafe_code, reason = "a kernel launch: the arguments match the kernel's signature in KERNELS")]
        // SAFETY: every launch passes the argument types and counts its kernel declares, with
        // buffers sized by the callers for the extents the kernel touches.
        let launched = unsafe { builder.launch($cfg) };
        launched.map(|_| ()).map_err(err($name))
    }};
}

impl Backend for Cuda {
    type Buf = CudaSlice<f32>;
    type Mat = CudaMat;

    fn describe(&self) -> String {
        format!("cuda:{} ({})", self.ordinal, self.name)
    }

    fn upload(&self, data: &[f32]) -> Result<Self::Buf> {
        self.stream.clone_htod(data).map_err(err("upload"))
    }

    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(buf).map_err(err("download"))
    }

    fn zeros(&self, len: usize) -> Result<Self::Buf> {
        self.stream.alloc_zeros::<f32>(len.max(1)).map_err(err("alloc"))
    }

    fn weight(&self, data: &[f32], k: usize, n: usize, transposed: bool) -> Result<CudaMat> {
        Ok(CudaMat { k, n, transposed, w: self.upload(data)? })
    }

    fn matmul_into(
        &self,
        x: &Self::Buf,
        m: usize,
        w: &CudaMat,
        bias: Option<&Self::Buf>,
        epilogue: Epilogue,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let (k, n) = (w.k, w.n);
        if out.len() < m * n || x.len() < m * k {
            return Err(DeviceError(format!("matmul: buffers too short for [{m}, {k}] · [{k}, {n}]")));
        }
        let mut out = out.slice_mut(0..m * n);
        let (r, c) = (m as u32, n as u32);
        let beta = match (epilogue, bias) {
            (Epilogue::Store(_), Some(b)) => {
                launch!(self, "fill_rows", linear(m * n), &mut out, b, &r, &c)?;
                1.0
            }
            (Epilogue::Add, Some(b)) => {
                launch!(self, "add_rows", linear(m * n), &mut out, b, &r, &c)?;
                1.0
            }
            (Epilogue::Add, None) => 1.0,
            (Epilogue::Store(_), None) => 0.0,
        };
        // Row-major C[m,n] = X[m,k]·W is column-major Cᵀ[n,m] = Wᵀ·Xᵀ, and a row-major matrix read
        // column-major is its transpose: so cuBLAS gets W then X, untransposed (or W transposed when
        // it is stored [n, k]).
        let cfg = GemmConfig {
            transa: if w.transposed { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N },
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: 1.0f32,
            lda: if w.transposed { k as i32 } else { n as i32 },
            ldb: k as i32,
            beta,
            ldc: n as i32,
        };
        #[expect(unsafe_code, reason = "cuBLAS GEMM on buffers whose sizes are checked above")]
        // SAFETY: `w` holds k·n floats, `x` at least m·k (checked) and `out` is a view of exactly
        // m·n, matching the dimensions and leading dimensions above.
        let done = unsafe { self.blas.gemm(cfg, &w.w, x, &mut out) };
        done.map_err(|e| DeviceError(format!("cuBLAS gemm: {e}")))?;
        if let Epilogue::Store(Some(act)) = epilogue {
            let kind = act_kind(act);
            let total = (m * n) as u32;
            launch!(self, "activate", linear(m * n), &mut out, &total, &kind)?;
        }
        Ok(())
    }

    fn add_assign(&self, x: &mut Self::Buf, y: &Self::Buf) -> Result<()> {
        let (n, cfg) = (x.len() as u32, linear(x.len()));
        launch!(self, "add_assign", cfg, x, y, &n)
    }

    fn activate(&self, x: &mut Self::Buf, act: Act) -> Result<()> {
        let kind = act_kind(act);
        let (n, cfg) = (x.len() as u32, linear(x.len()));
        launch!(self, "activate", cfg, x, &n, &kind)
    }

    fn layer_norm(
        &self,
        x: &Self::Buf,
        cols: usize,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        eps: f32,
    ) -> Result<Self::Buf> {
        let mut out = self.zeros(x.len())?;
        let c = cols as u32;
        launch!(self, "layer_norm", rows(x.len() / cols, 256), x, &mut out, &c, gamma, beta, &eps)?;
        Ok(out)
    }

    fn layer_norm_into(
        &self,
        x: &Self::Buf,
        rows: usize,
        cols: usize,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<()> {
        if x.len() < rows * cols || out.len() < rows * cols {
            return Err(DeviceError(format!("layer_norm: buffers too short for {rows} rows")));
        }
        let c = cols as u32;
        launch!(self, "layer_norm", self::rows(rows, 256), x, out, &c, gamma, beta, &eps)
    }

    fn gather_into(&self, table: &Self::Buf, cols: usize, ids: &[u32], out: &mut Self::Buf) -> Result<()> {
        if out.len() < ids.len() * cols {
            return Err(DeviceError(format!("gather: buffer too short for {} rows", ids.len())));
        }
        let dev = self.ids(ids)?;
        let (c, r) = (cols as u32, ids.len() as u32);
        launch!(self, "gather", linear(ids.len() * cols), table, &dev, out, &c, &r)
    }

    fn copy(&self, src: &Self::Buf, from: usize, dst: &mut Self::Buf, to: usize, len: usize) -> Result<()> {
        let view = src.slice(from..from + len);
        let mut target = dst.slice_mut(to..to + len);
        self.stream.memcpy_dtod(&view, &mut target).map_err(err("copy"))
    }

    fn attention_step(
        &self,
        qkv: &Self::Buf,
        caches: &[KvCache<Self>],
        layer: usize,
        heads: usize,
        head_dim: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        // One launch per sequence (each has its own cache buffers), each a batch of one with one
        // query: the `attention` kernel reads the query row at the start of the view it is given.
        let hidden = heads * head_dim;
        for (b, c) in caches.iter().enumerate() {
            let q = qkv.slice(b * 3 * hidden..b * 3 * hidden + hidden);
            let mut o = out.slice_mut(b * hidden..(b + 1) * hidden);
            let lens = self.ids(&[c.len as u32])?;
            let cfg = LaunchConfig {
                grid_dim: (1, heads as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: (c.len.max(1) * 4) as u32,
            };
            let (ql, ks, h, d, causal) = (1u32, c.len as u32, heads as u32, head_dim as u32, -1i32);
            let (k, v) = (&c.keys[layer], &c.values[layer]);
            launch!(self, "attention", cfg, &q, k, v, &mut o, &ql, &ks, &lens, &h, &d, &causal)?;
        }
        Ok(())
    }

    fn gather(&self, table: &Self::Buf, cols: usize, ids: &[u32]) -> Result<Self::Buf> {
        let mut out = self.zeros(ids.len() * cols)?;
        let dev = self.ids(ids)?;
        let (c, r) = (cols as u32, ids.len() as u32);
        launch!(self, "gather", linear(ids.len() * cols), table, &dev, &mut out, &c, &r)?;
        Ok(out)
    }

    fn add_gathered(&self, x: &mut Self::Buf, table: &Self::Buf, cols: usize, ids: &[u32]) -> Result<()> {
        let dev = self.ids(ids)?;
        let (c, r) = (cols as u32, ids.len() as u32);
        launch!(self, "add_gathered", linear(ids.len() * cols), x, table, &dev, &c, &r)
    }

    fn columns(&self, x: &Self::Buf, cols: usize, from: usize, width: usize) -> Result<Self::Buf> {
        let n_rows = x.len() / cols;
        let mut out = self.zeros(n_rows * width)?;
        let (r, c, f, w) = (n_rows as u32, cols as u32, from as u32, width as u32);
        launch!(self, "columns", linear(n_rows * width), x, &mut out, &r, &c, &f, &w)?;
        Ok(out)
    }

    fn write_rows(&self, dst: &mut Self::Buf, cols: usize, at: usize, src: &Self::Buf) -> Result<()> {
        let mut view = dst.slice_mut(at * cols..at * cols + src.len());
        self.stream.memcpy_dtod(src, &mut view).map_err(err("copy"))
    }

    fn attention(&self, q: &Self::Buf, k: &Self::Buf, v: &Self::Buf, s: &Attention<'_>) -> Result<Self::Buf> {
        let hidden = s.heads * s.head_dim;
        let mut out = self.zeros(s.batch * s.q_len * hidden)?;
        let lens: Vec<u32> = s.kv_len.iter().map(|&l| l as u32).collect();
        let lens = self.ids(&lens)?;
        let cfg = LaunchConfig {
            grid_dim: (s.q_len as u32, s.heads as u32, s.batch as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: (s.kv_stride * 4) as u32,
        };
        let causal: i32 = s.causal.map_or(-1, |o| o as i32);
        let (ql, ks, h, d) = (s.q_len as u32, s.kv_stride as u32, s.heads as u32, s.head_dim as u32);
        launch!(self, "attention", cfg, q, k, v, &mut out, &ql, &ks, &lens, &h, &d, &causal)?;
        Ok(out)
    }

    fn mean_pool(&self, x: &Self::Buf, len: usize, cols: usize, lens: &[usize]) -> Result<Self::Buf> {
        let mut out = self.zeros(lens.len() * cols)?;
        let lens: Vec<u32> = lens.iter().map(|&l| l as u32).collect();
        let dev = self.ids(&lens)?;
        let (l, c) = (len as u32, cols as u32);
        launch!(self, "mean_pool", rows(lens.len(), 256), x, &mut out, &l, &c, &dev)?;
        Ok(out)
    }

    fn l2_normalize(&self, x: &mut Self::Buf, cols: usize) -> Result<()> {
        let (c, cfg) = (cols as u32, rows(x.len() / cols, 256));
        launch!(self, "l2_normalize", cfg, x, &c)
    }

    fn row(&self, x: &Self::Buf, cols: usize, row: usize) -> Result<Self::Buf> {
        let mut out = self.zeros(cols)?;
        let view = x.slice(row * cols..(row + 1) * cols);
        self.stream.memcpy_dtod(&view, &mut out).map_err(err("copy"))?;
        Ok(out)
    }

    fn sample_row(&self, logits: &Self::Buf, cols: usize, row: usize, params: &Params, uniform: f32) -> Result<u32> {
        let logits = logits.slice(row * cols..(row + 1) * cols);
        if params.top_k > 0 && !params.is_greedy() || params.top_p < 1.0 {
            // Top-k / top-p need a sort; the row comes to the host for it.
            let host = self.stream.clone_dtoh(&logits).map_err(err("download"))?;
            return Ok(super::sample::pick(&host, params, uniform));
        }
        let mut out = self.stream.alloc_zeros::<u32>(1).map_err(err("alloc"))?;
        let n = cols as u32;
        let temperature = if params.is_greedy() { 0.0f32 } else { params.temperature };
        launch!(self, "choose", rows(1, 1024), &logits, &n, &temperature, &uniform, &mut out)?;
        let id = self.stream.clone_dtoh(&out).map_err(err("download"))?;
        Ok(id[0])
    }
}

fn act_kind(act: Act) -> i32 {
    match act {
        Act::GeluErf => 0,
        Act::GeluTanh => 1,
        Act::Relu => 2,
        Act::Tanh => 3,
        Act::Sigmoid => 4,
    }
}
