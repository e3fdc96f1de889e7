//! BERT-family encoders (all-MiniLM-L6-v2 first), pooled into sentence embeddings the way
//! sentence-transformers does: mean (or CLS) pooling over the real tokens, then L2 normalisation
//! when the model's `modules.json` lists a `Normalize` module.

use super::backend::{Act, Attention, Backend, Epilogue};
use super::load::ModelFiles;

struct Layer<B: Backend> {
    /// Query, key and value projections as one `[hidden, 3 · hidden]` product (one pass over the
    /// activations instead of three), and their biases.
    qkv: (B::Mat, B::Buf),
    out: (B::Mat, B::Buf),
    ln1: (B::Buf, B::Buf),
    up: (B::Mat, B::Buf),
    down: (B::Mat, B::Buf),
    ln2: (B::Buf, B::Buf),
}

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
}

/// A loaded encoder.
pub struct Bert<B: Backend> {
    pub hidden: usize,
    heads: usize,
    eps: f32,
    act: Act,
    /// The longest input accepted, in tokens (sentence-transformers' `max_seq_length` when given).
    pub max_len: usize,
    pooling: Pooling,
    normalize: bool,
    word: B::Buf,
    position: B::Buf,
    token_type: B::Buf,
    ln: (B::Buf, B::Buf),
    layers: Vec<Layer<B>>,
}

impl<B: Backend> Bert<B> {
    pub fn load(files: &ModelFiles, backend: &B) -> Result<Self, String> {
        let hidden = files.usize(&["hidden_size"])?;
        let heads = files.usize(&["num_attention_heads"])?;
        let intermediate = files.usize(&["intermediate_size"])?;
        let vocab = files.usize(&["vocab_size"])?;
        let positions = files.usize(&["max_position_embeddings"])?;
        let types = files.usize(&["type_vocab_size"]).unwrap_or(2);
        let n_layers = files.usize(&["num_hidden_layers"])?;
        let eps = files.config.get("layer_norm_eps").and_then(serde_json::Value::as_f64).unwrap_or(1e-12) as f32;
        let act_name = files.config.get("hidden_act").and_then(serde_json::Value::as_str).unwrap_or("gelu");
        let act = Act::from_hf(act_name).ok_or_else(|| format!("unsupported hidden_act {act_name:?}"))?;
        if hidden % heads != 0 {
            return Err(format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}"));
        }
        let st_max = files.side_json("sentence_bert_config.json").and_then(|c| c.get("max_seq_length")?.as_u64());
        let max_len = st_max.map_or(positions, |m| (m as usize).min(positions));
        let pooling = match files.side_json("1_Pooling/config.json") {
            Some(p) if p.get("pooling_mode_cls_token").and_then(serde_json::Value::as_bool) == Some(true) => {
                Pooling::Cls
            }
            _ => Pooling::Mean,
        };
        let normalize = files.side_json("modules.json").is_some_and(|m| {
            m.as_array().is_some_and(|mods| {
                mods.iter().any(|m| {
                    m.get("type").and_then(serde_json::Value::as_str).is_some_and(|t| t.ends_with("Normalize"))
                })
            })
        });
        let p: &[&str] = &["", "bert.", "model."];
        let t = |name: &str, shape: &[usize]| files.upload(backend, p, name, shape);
        let lin = |name: &str, out: usize, inp: usize| -> Result<(B::Mat, B::Buf), String> {
            let w = files.weight(backend, p, &format!("{name}.weight"), (inp, out), true)?;
            Ok((w, t(&format!("{name}.bias"), &[out])?))
        };
        let qkv = |name: &str| -> Result<(B::Mat, B::Buf), String> {
            let (mut w, mut b) = (Vec::with_capacity(3 * hidden * hidden), Vec::with_capacity(3 * hidden));
            for part in ["query", "key", "value"] {
                w.extend_from_slice(files.tensor(p, &format!("{name}.{part}.weight"), &[hidden, hidden])?);
                b.extend_from_slice(files.tensor(p, &format!("{name}.{part}.bias"), &[hidden])?);
            }
            let e = |e: super::backend::DeviceError| e.to_string();
            Ok((backend.weight(&w, hidden, 3 * hidden, true).map_err(e)?, backend.upload(&b).map_err(e)?))
        };
        let norm = |name: &str| -> Result<(B::Buf, B::Buf), String> {
            Ok((t(&format!("{name}.weight"), &[hidden])?, t(&format!("{name}.bias"), &[hidden])?))
        };
        let mut layers = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let l = format!("encoder.layer.{i}");
            layers.push(Layer {
                qkv: qkv(&format!("{l}.attention.self"))?,
                out: lin(&format!("{l}.attention.output.dense"), hidden, hidden)?,
                ln1: norm(&format!("{l}.attention.output.LayerNorm"))?,
                up: lin(&format!("{l}.intermediate.dense"), intermediate, hidden)?,
                down: lin(&format!("{l}.output.dense"), hidden, intermediate)?,
                ln2: norm(&format!("{l}.output.LayerNorm"))?,
            });
        }
        Ok(Self {
            hidden,
            heads,
            eps,
            act,
            max_len,
            pooling,
            normalize,
            word: t("embeddings.word_embeddings.weight", &[vocab, hidden])?,
            position: t("embeddings.position_embeddings.weight", &[positions, hidden])?,
            token_type: t("embeddings.token_type_embeddings.weight", &[types, hidden])?,
            ln: norm("embeddings.LayerNorm")?,
            layers,
        })
    }

    /// Sentence embeddings for a batch of token-id sequences (each non-empty, at most `max_len`).
    pub fn embed(&self, backend: &B, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, String> {
        let e = |e: super::backend::DeviceError| e.to_string();
        let h = self.hidden;
        let len = batch.iter().map(Vec::len).max().unwrap_or(0);
        let lens: Vec<usize> = batch.iter().map(Vec::len).collect();
        let rows = batch.len() * len;
        // Pad with id 0; padded positions are masked out of attention and pooling.
        let mut ids = vec![0u32; rows];
        for (b, seq) in batch.iter().enumerate() {
            ids[b * len..b * len + seq.len()].copy_from_slice(seq);
        }
        let positions: Vec<u32> = (0..rows).map(|r| (r % len) as u32).collect();
        let mut x = backend.gather(&self.word, h, &ids).map_err(e)?;
        backend.add_gathered(&mut x, &self.position, h, &positions).map_err(e)?;
        backend.add_gathered(&mut x, &self.token_type, h, &vec![0; rows]).map_err(e)?;
        let mut x = backend.layer_norm(&x, h, &self.ln.0, &self.ln.1, self.eps).map_err(e)?;
        let shape = Attention {
            batch: batch.len(),
            q_len: len,
            kv_stride: len,
            kv_len: &lens,
            heads: self.heads,
            head_dim: h / self.heads,
            causal: None,
        };
        for l in &self.layers {
            let qkv = backend.matmul(&x, rows, &l.qkv.0, Some(&l.qkv.1), None).map_err(e)?;
            let q = backend.columns(&qkv, 3 * h, 0, h).map_err(e)?;
            let k = backend.columns(&qkv, 3 * h, h, h).map_err(e)?;
            let v = backend.columns(&qkv, 3 * h, 2 * h, h).map_err(e)?;
            let ctx = backend.attention(&q, &k, &v, &shape).map_err(e)?;
            // The residual is added by the product itself: x += ctx · W + b.
            backend.matmul_into(&ctx, rows, &l.out.0, Some(&l.out.1), Epilogue::Add, &mut x).map_err(e)?;
            x = backend.layer_norm(&x, h, &l.ln1.0, &l.ln1.1, self.eps).map_err(e)?;
            let up = backend.matmul(&x, rows, &l.up.0, Some(&l.up.1), Some(self.act)).map_err(e)?;
            backend.matmul_into(&up, rows, &l.down.0, Some(&l.down.1), Epilogue::Add, &mut x).map_err(e)?;
            x = backend.layer_norm(&x, h, &l.ln2.0, &l.ln2.1, self.eps).map_err(e)?;
        }
        let mut pooled = match self.pooling {
            Pooling::Mean => backend.mean_pool(&x, len, h, &lens).map_err(e)?,
            Pooling::Cls => backend.mean_pool(&x, len, h, &vec![1; batch.len()]).map_err(e)?,
        };
        if self.normalize {
            backend.l2_normalize(&mut pooled, h).map_err(e)?;
        }
        let flat = backend.download(&pooled).map_err(e)?;
        Ok(flat.chunks_exact(h).map(<[f32]>::to_vec).collect())
    }
}

impl<B: Backend> std::fmt::Debug for Bert<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bert")
            .field("hidden", &self.hidden)
            .field("heads", &self.heads)
            .field("layers", &self.layers.len())
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .finish_non_exhaustive()
    }
}
