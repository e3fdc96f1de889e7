//! GPT-2-family decoders: a forward pass over new tokens that appends their keys and values to a
//! per-sequence KV cache, so each generated token costs one position, not the whole prefix.

use super::backend::{Act, Attention, Backend, DeviceError};
use super::load::ModelFiles;

struct Block<B: Backend> {
    ln1: (B::Buf, B::Buf),
    attn: (B::Buf, B::Buf),
    attn_proj: (B::Buf, B::Buf),
    ln2: (B::Buf, B::Buf),
    fc: (B::Buf, B::Buf),
    proj: (B::Buf, B::Buf),
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
    lm_head: Option<B::Buf>,
    wpe: B::Buf,
    blocks: Vec<Block<B>>,
    ln_f: (B::Buf, B::Buf),
}

/// One sequence's keys and values, per layer, sized for the whole context window.
pub struct KvCache<B: Backend> {
    keys: Vec<B::Buf>,
    values: Vec<B::Buf>,
    /// Positions filled so far.
    pub len: usize,
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
        let conv = |name: &str, inp: usize, out: usize| -> Result<(B::Buf, B::Buf), String> {
            Ok((t(&format!("{name}.weight"), &[inp, out])?, t(&format!("{name}.bias"), &[out])?))
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
            lm_head: match files.tensor(&[""], "lm_head.weight", &[vocab, hidden]) {
                Ok(w) => Some(backend.upload(w).map_err(|e| e.to_string())?),
                Err(_) => None,
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
            let qkv = backend.matmul(&a, t, h, &b.attn.0, 3 * h, false, Some(&b.attn.1))?;
            let q = backend.columns(&qkv, 3 * h, 0, h)?;
            let k = backend.columns(&qkv, 3 * h, h, h)?;
            let v = backend.columns(&qkv, 3 * h, 2 * h, h)?;
            backend.write_rows(&mut cache.keys[i], h, past, &k)?;
            backend.write_rows(&mut cache.values[i], h, past, &v)?;
            let ctx = backend.attention(&q, &cache.keys[i], &cache.values[i], &shape)?;
            let proj = backend.matmul(&ctx, t, h, &b.attn_proj.0, h, false, Some(&b.attn_proj.1))?;
            backend.add_assign(&mut x, &proj)?;
            let m = backend.layer_norm(&x, h, &b.ln2.0, &b.ln2.1, self.eps)?;
            let mut up = backend.matmul(&m, t, h, &b.fc.0, self.inner, false, Some(&b.fc.1))?;
            backend.activate(&mut up, self.act)?;
            let down = backend.matmul(&up, t, self.inner, &b.proj.0, h, false, Some(&b.proj.1))?;
            backend.add_assign(&mut x, &down)?;
        }
        cache.len = past + t;
        let x = backend.layer_norm(&x, h, &self.ln_f.0, &self.ln_f.1, self.eps)?;
        // logits = x · headᵀ, the head usually being the token embeddings.
        let head = self.lm_head.as_ref().unwrap_or(&self.wte);
        if all_logits {
            backend.matmul(&x, t, h, head, self.vocab, true, None)
        } else {
            let last = backend.row(&x, h, t - 1)?;
            backend.matmul(&last, 1, h, head, self.vocab, true, None)
        }
    }

    /// Greedy or sampled continuation of `prompt`, `n` tokens at most, stopping at `eos`: the plain
    /// loop the server's scheduler interleaves, for tests and benchmarks.
    pub fn generate(
        &self,
        backend: &B,
        prompt: &[u32],
        n: usize,
        params: &super::sample::Params,
        eos: Option<u32>,
        mut uniform: impl FnMut() -> f32,
    ) -> Result<Vec<u32>, DeviceError> {
        let mut cache = self.cache(backend)?;
        let mut next = prompt.to_vec();
        let mut out = Vec::new();
        while out.len() < n && cache.len + next.len() <= self.context {
            let logits = self.forward(backend, &mut cache, &next, false)?;
            let id = backend.sample(&logits, params, uniform())?;
            if Some(id) == eos {
                break;
            }
            out.push(id);
            next = vec![id];
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

impl<B: Backend> std::fmt::Debug for KvCache<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache").field("layers", &self.keys.len()).field("len", &self.len).finish()
    }
}
