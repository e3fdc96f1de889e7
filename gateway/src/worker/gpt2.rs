//! GPT-2-family decoders: a forward pass over new tokens that appends their keys and values to a
//! per-sequence KV cache, so each generated token costs one position, not the whole prefix; and a
//! batched decode step ([`Gpt2::step`]) that advances many sequences by one token each in one pass
//! over the weights, each attending to its own cache, into buffers kept between steps.

pub use super::backend::KvCache;
use super::backend::{Act, Attention, Backend, DeviceError, Epilogue};
use super::load::ModelFiles;

struct Block<B: Backend> {
    ln1: (B::Buf, B::Buf),
    attn: (B::Mat, B::Buf),
    attn_proj: (B::Mat, B::Buf),
    ln2: (B::Buf, B::Buf),
    fc: (B::Mat, B::Buf),
    proj: (B::Mat, B::Buf),
}

/// A loaded decoder.
pub struct Gpt2<B: Backend> {
    pub hidden: usize,
    heads: usize,
    pub vocab: usize,
    /// The context window, in tokens (`n_positions`).
    pub context: usize,
    inner: usize,
    eps: f32,
    act: Act,
    wte: B::Buf,
    /// The output projection: `lm_head.weight`, or the token embeddings it is usually tied to,
    /// prepared as a product's weight (on the CPU that is a second copy of the embeddings, which
    /// buys the product its own layout).
    head: B::Mat,
    wpe: B::Buf,
    blocks: Vec<Block<B>>,
    ln_f: (B::Buf, B::Buf),
}

/// The activations of a batched decode step, allocated once for up to `rows` sequences and reused
/// by every step.
pub struct Decoder<B: Backend> {
    rows: usize,
    x: B::Buf,
    a: B::Buf,
    qkv: B::Buf,
    ctx: B::Buf,
    up: B::Buf,
    logits: B::Buf,
    positions: Vec<u32>,
}

impl<B: Backend> Gpt2<B> {
    pub fn load(files: &ModelFiles, backend: &B) -> Result<Self, String> {
        let hidden = files.usize(&["n_embd", "hidden_size"])?;
        let heads = files.usize(&["n_head", "num_attention_heads"])?;
        let vocab = files.usize(&["vocab_size"])?;
        let context = files.usize(&["n_positions", "max_position_embeddings"])?;
        let n_layers = files.usize(&["n_layer", "num_hidden_layers"])?;
        let inner = files.usize(&["n_inner"]).unwrap_or(4 * hidden);
        let eps = files.config.get("layer_norm_epsilon").and_then(serde_json::Value::as_f64).unwrap_or(1e-5) as f32;
        let act_name =
            files.config.get("activation_function").and_then(serde_json::Value::as_str).unwrap_or("gelu_new");
        let act = Act::from_hf(act_name).ok_or_else(|| format!("unsupported activation_function {act_name:?}"))?;
        if hidden % heads != 0 {
            return Err(format!("n_embd {hidden} is not a multiple of n_head {heads}"));
        }
        let p: &[&str] = &["", "transformer."];
        let t = |name: &str, shape: &[usize]| files.upload(backend, p, name, shape);
        // GPT-2's Conv1D stores weights as [in, out].
        let conv = |name: &str, inp: usize, out: usize| -> Result<(B::Mat, B::Buf), String> {
            let w = files.weight(backend, p, &format!("{name}.weight"), (inp, out), false)?;
            Ok((w, t(&format!("{name}.bias"), &[out])?))
        };
        let norm = |name: &str| -> Result<(B::Buf, B::Buf), String> {
            Ok((t(&format!("{name}.weight"), &[hidden])?, t(&format!("{name}.bias"), &[hidden])?))
        };
        let blocks = (0..n_layers)
            .map(|i| {
                Ok(Block {
                    ln1: norm(&format!("h.{i}.ln_1"))?,
                    attn: conv(&format!("h.{i}.attn.c_attn"), hidden, 3 * hidden)?,
                    attn_proj: conv(&format!("h.{i}.attn.c_proj"), hidden, hidden)?,
                    ln2: norm(&format!("h.{i}.ln_2"))?,
                    fc: conv(&format!("h.{i}.mlp.c_fc"), hidden, inner)?,
                    proj: conv(&format!("h.{i}.mlp.c_proj"), inner, hidden)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            hidden,
            heads,
            vocab,
            context,
            inner,
            eps,
            act,
            // Tied to the token embeddings unless the checkpoint has its own output head.
            head: match files.weight(backend, &[""], "lm_head.weight", (hidden, vocab), true) {
                Ok(w) => w,
                Err(_) => files.weight(backend, p, "wte.weight", (hidden, vocab), true)?,
            },
            wte: t("wte.weight", &[vocab, hidden])?,
            wpe: t("wpe.weight", &[context, hidden])?,
            blocks,
            ln_f: norm("ln_f")?,
        })
    }

    /// An empty cache for one sequence.
    pub fn cache(&self, backend: &B) -> Result<KvCache<B>, DeviceError> {
        let size = self.context * self.hidden;
        let keys = (0..self.blocks.len()).map(|_| backend.zeros(size)).collect::<Result<_, _>>()?;
        let values = (0..self.blocks.len()).map(|_| backend.zeros(size)).collect::<Result<_, _>>()?;
        Ok(KvCache { keys, values, len: 0 })
    }

    /// The buffers of a decode step for up to `rows` sequences at once.
    pub fn decoder(&self, backend: &B, rows: usize) -> Result<Decoder<B>, DeviceError> {
        let h = self.hidden;
        Ok(Decoder {
            rows,
            x: backend.zeros(rows * h)?,
            a: backend.zeros(rows * h)?,
            qkv: backend.zeros(rows * 3 * h)?,
            ctx: backend.zeros(rows * h)?,
            up: backend.zeros(rows * self.inner)?,
            logits: backend.zeros(rows * self.vocab)?,
            positions: Vec::with_capacity(rows),
        })
    }

    /// Runs `ids` (the tokens after those already cached) and returns the logits: of every new
    /// position when `all_logits`, else of the last one only (`[vocab]`, left on the device).
    pub fn forward(
        &self,
        backend: &B,
        cache: &mut KvCache<B>,
        ids: &[u32],
        all_logits: bool,
    ) -> Result<B::Buf, DeviceError> {
        let (h, t, past) = (self.hidden, ids.len(), cache.len);
        assert!(t > 0 && past + t <= self.context, "the caller checks the context window");
        let positions: Vec<u32> = (past..past + t).map(|p| p as u32).collect();
        let mut x = backend.gather(&self.wte, h, ids)?;
        backend.add_gathered(&mut x, &self.wpe, h, &positions)?;
        let kv_len = [past + t];
        let shape = Attention {
            batch: 1,
            q_len: t,
            kv_stride: self.context,
            kv_len: &kv_len,
            heads: self.heads,
            head_dim: h / self.heads,
            causal: Some(past),
        };
        for (i, b) in self.blocks.iter().enumerate() {
            let a = backend.layer_norm(&x, h, &b.ln1.0, &b.ln1.1, self.eps)?;
            let qkv = backend.matmul(&a, t, &b.attn.0, Some(&b.attn.1), None)?;
            let q = backend.columns(&qkv, 3 * h, 0, h)?;
            let k = backend.columns(&qkv, 3 * h, h, h)?;
            let v = backend.columns(&qkv, 3 * h, 2 * h, h)?;
            backend.write_rows(&mut cache.keys[i], h, past, &k)?;
            backend.write_rows(&mut cache.values[i], h, past, &v)?;
            let ctx = backend.attention(&q, &cache.keys[i], &cache.values[i], &shape)?;
            // Residuals are added by the products themselves: x += ctx · W + b.
            backend.matmul_into(&ctx, t, &b.attn_proj.0, Some(&b.attn_proj.1), Epilogue::Add, &mut x)?;
            let m = backend.layer_norm(&x, h, &b.ln2.0, &b.ln2.1, self.eps)?;
            let up = backend.matmul(&m, t, &b.fc.0, Some(&b.fc.1), Some(self.act))?;
            backend.matmul_into(&up, t, &b.proj.0, Some(&b.proj.1), Epilogue::Add, &mut x)?;
        }
        cache.len = past + t;
        let x = backend.layer_norm(&x, h, &self.ln_f.0, &self.ln_f.1, self.eps)?;
        if all_logits {
            backend.matmul(&x, t, &self.head, None, None)
        } else {
            let last = backend.row(&x, h, t - 1)?;
            backend.matmul(&last, 1, &self.head, None, None)
        }
    }

    /// One decode step for `ids.len()` sequences at once: sequence `b` feeds `ids[b]` at the next
    /// position of `caches[b]` (each has room for it). The weights are read once for all of them;
    /// each attends to its own cache. Returns the logits, row `b` for sequence `b`, in `decoder`'s
    /// buffer; nothing is allocated.
    pub fn step<'d>(
        &self,
        backend: &B,
        d: &'d mut Decoder<B>,
        caches: &mut [KvCache<B>],
        ids: &[u32],
    ) -> Result<&'d B::Buf, DeviceError> {
        let (h, n) = (self.hidden, ids.len());
        assert!(n > 0 && n == caches.len() && n <= d.rows, "one id per cache, at most the decoder's rows");
        d.positions.clear();
        for c in caches.iter_mut() {
            assert!(c.len < self.context, "the caller checks the context window");
            d.positions.push(c.len as u32);
            c.len += 1;
        }
        backend.gather_into(&self.wte, h, ids, &mut d.x)?;
        backend.add_gathered(&mut d.x, &self.wpe, h, &d.positions)?;
        for (i, b) in self.blocks.iter().enumerate() {
            backend.layer_norm_into(&d.x, n, h, &b.ln1.0, &b.ln1.1, self.eps, &mut d.a)?;
            backend.matmul_into(&d.a, n, &b.attn.0, Some(&b.attn.1), Epilogue::Store(None), &mut d.qkv)?;
            for (r, c) in caches.iter_mut().enumerate() {
                let at = (c.len - 1) * h;
                backend.copy(&d.qkv, r * 3 * h + h, &mut c.keys[i], at, h)?;
                backend.copy(&d.qkv, r * 3 * h + 2 * h, &mut c.values[i], at, h)?;
            }
            backend.attention_step(&d.qkv, caches, i, self.heads, h / self.heads, &mut d.ctx)?;
            backend.matmul_into(&d.ctx, n, &b.attn_proj.0, Some(&b.attn_proj.1), Epilogue::Add, &mut d.x)?;
            backend.layer_norm_into(&d.x, n, h, &b.ln2.0, &b.ln2.1, self.eps, &mut d.a)?;
            backend.matmul_into(&d.a, n, &b.fc.0, Some(&b.fc.1), Epilogue::Store(Some(self.act)), &mut d.up)?;
            backend.matmul_into(&d.up, n, &b.proj.0, Some(&b.proj.1), Epilogue::Add, &mut d.x)?;
        }
        backend.layer_norm_into(&d.x, n, h, &self.ln_f.0, &self.ln_f.1, self.eps, &mut d.a)?;
        backend.matmul_into(&d.a, n, &self.head, None, Epilogue::Store(None), &mut d.logits)?;
        Ok(&d.logits)
    }

    /// Greedy or sampled continuation of `prompt`, `n` tokens at most, stopping at `eos`: the
    /// prompt in one forward pass, then one decode step per token — the same two calls the
    /// server's scheduler makes, for tests and benchmarks.
    pub fn generate(
        &self,
        backend: &B,
        prompt: &[u32],
        n: usize,
        params: &super::sample::Params,
        eos: Option<u32>,
        mut uniform: impl FnMut() -> f32,
    ) -> Result<Vec<u32>, DeviceError> {
        let mut out = Vec::new();
        if n == 0 || prompt.is_empty() || prompt.len() > self.context {
            return Ok(out);
        }
        let mut caches = vec![self.cache(backend)?];
        let mut decoder = self.decoder(backend, 1)?;
        let first = self.forward(backend, &mut caches[0], prompt, false)?;
        let mut id = backend.sample_row(&first, self.vocab, 0, params, uniform())?;
        loop {
            if Some(id) == eos {
                break;
            }
            out.push(id);
            if out.len() >= n || caches[0].len >= self.context {
                break;
            }
            let logits = self.step(backend, &mut decoder, &mut caches, &[id])?;
            id = backend.sample_row(logits, self.vocab, 0, params, uniform())?;
        }
        Ok(out)
    }
}

impl<B: Backend> std::fmt::Debug for Gpt2<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpt2")
            .field("hidden", &self.hidden)
            .field("heads", &self.heads)
            .field("layers", &self.blocks.len())
            .field("vocab", &self.vocab)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> std::fmt::Debug for Decoder<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("rows", &self.rows).finish_non_exhaustive()
    }
}
