//! Multilayer perceptrons for tabular prediction. The manifest is a `config.json`:
//! `{"model_type": "mlp", "features": [names…], "layer_sizes": [in, hidden…, out], "hidden_act": "relu",
//! "output_act": "sigmoid"}` beside `model.safetensors` holding `layers.{i}.weight` (`[out, in]`),
//! `layers.{i}.bias`, and optionally `input.mean` / `input.std` to standardise the features.

use serde_json::Value;

use super::backend::{Act, Backend};
use super::load::ModelFiles;

/// A loaded MLP.
pub struct Mlp<B: Backend> {
    pub input: Inputs,
    sizes: Vec<usize>,
    hidden_act: Act,
    output_act: Option<Act>,
    layers: Vec<(B::Mat, B::Buf)>,
}

/// How instances become model inputs: the feature names and their standardisation.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Feature names, in input order; an instance may be an array in this order or an object by name.
    pub features: Vec<String>,
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl<B: Backend> Mlp<B> {
    pub fn load(files: &ModelFiles, backend: &B) -> Result<Self, String> {
        let c = &files.config;
        let sizes: Vec<usize> = c
            .get("layer_sizes")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).map(|n| n as usize).collect())
            .filter(|s: &Vec<usize>| s.len() >= 2 && s.iter().all(|&n| n > 0))
            .ok_or("config.json needs layer_sizes: [inputs, hidden…, outputs]")?;
        let features: Vec<String> = match c.get("features").and_then(Value::as_array) {
            Some(names) => names.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            None => (0..sizes[0]).map(|i| format!("x{i}")).collect(),
        };
        if features.len() != sizes[0] {
            return Err(format!("config.json lists {} features for {} inputs", features.len(), sizes[0]));
        }
        let act = |key: &str, default: &str| -> Result<Option<Act>, String> {
            match c.get(key).and_then(Value::as_str).unwrap_or(default) {
                "identity" | "linear" | "none" => Ok(None),
                name => Act::from_hf(name).map(Some).ok_or_else(|| format!("unsupported {key} {name:?}")),
            }
        };
        let hidden_act = act("hidden_act", "relu")?.ok_or("hidden_act must be a non-linearity")?;
        let output_act = act("output_act", "identity")?;
        let n = sizes[0];
        let (mean, std) = match (files.tensor(&[""], "input.mean", &[n]), files.tensor(&[""], "input.std", &[n])) {
            (Ok(m), Ok(s)) => (m.to_vec(), s.to_vec()),
            _ => (vec![0.0; n], vec![1.0; n]),
        };
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                Ok((
                    files.weight(backend, &[""], &format!("layers.{i}.weight"), (w[0], w[1]), true)?,
                    files.upload(backend, &[""], &format!("layers.{i}.bias"), &[w[1]])?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self { input: Inputs { features, mean, std }, sizes, hidden_act, output_act, layers })
    }

    pub fn outputs(&self) -> usize {
        *self.sizes.last().unwrap_or(&1)
    }

    /// Outputs for a batch of standardised rows.
    pub fn predict(&self, backend: &B, rows: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, String> {
        let e = |e: super::backend::DeviceError| e.to_string();
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let mut x = backend.upload(&flat).map_err(e)?;
        let last = self.layers.len() - 1;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            let act = if i == last { self.output_act } else { Some(self.hidden_act) };
            x = backend.matmul(&x, rows.len(), w, Some(b), act).map_err(e)?;
        }
        let out = backend.download(&x).map_err(e)?;
        Ok(out.chunks_exact(self.outputs()).map(<[f32]>::to_vec).collect())
    }
}

impl Inputs {
    /// Reads one instance (an array of numbers, or an object by feature name) into standardised inputs.
    pub fn read_instance(&self, instance: &Value, index: usize) -> Result<Vec<f32>, String> {
        let n = self.features.len();
        let values: Vec<Option<f64>> = match instance {
            Value::Array(items) if items.len() == n => items.iter().map(Value::as_f64).collect(),
            Value::Array(items) => {
                return Err(format!(
                    "instances[{index}] has {} values; this model takes {n} ({})",
                    items.len(),
                    self.features.join(", ")
                ));
            }
            Value::Object(map) => {
                if let Some(extra) = map.keys().find(|k| !self.features.contains(k)) {
                    return Err(format!(
                        "instances[{index}] has an unknown feature {extra:?}; expected {}",
                        self.features.join(", ")
                    ));
                }
                self.features.iter().map(|f| map.get(f).and_then(Value::as_f64)).collect()
            }
            _ => return Err(format!("instances[{index}] must be an array of {n} numbers or an object of features")),
        };
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let v = v.ok_or_else(|| format!("instances[{index}].{} must be a number", self.features[i]))?;
                Ok((v as f32 - self.mean[i]) / self.std[i])
            })
            .collect()
    }
}

impl<B: Backend> std::fmt::Debug for Mlp<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mlp")
            .field("sizes", &self.sizes)
            .field("features", &self.input.features)
            .finish_non_exhaustive()
    }
}
