//! Choosing the next token from logits: greedy at temperature 0, otherwise temperature, top-k and
//! top-p (nucleus) sampling, driven by one uniform draw per token so that a `seed` reproduces a run.

/// Sampling settings of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// 0 means greedy (the most likely token).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
}

impl Params {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 1e-6 || self.top_k == 1
    }
}

/// The chosen token id. `uniform` is a draw from `[0, 1)`.
pub fn pick(logits: &[f32], params: &Params, uniform: f32) -> u32 {
    if params.is_greedy() {
        return argmax(logits);
    }
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    // Most likely first; ties keep the lower id first, so the order is deterministic.
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    if params.top_k > 0 {
        order.truncate(params.top_k);
    }
    let max = logits[order[0] as usize];
    let mut probs: Vec<f32> = order.iter().map(|&i| ((logits[i as usize] - max) / params.temperature).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    if params.top_p < 1.0 {
        let mut cumulative = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                cumulative += p;
                cumulative >= params.top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f32 = probs.iter().sum();
    let target = uniform * total;
    let mut cumulative = 0.0;
    for (p, &id) in probs.iter().zip(&order) {
        cumulative += p;
        if target < cumulative {
            return id;
        }
    }
    *order.last().unwrap_or(&0)
}

/// The index of the largest logit (the first one on ties, as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGITS: [f32; 4] = [1.0, 3.0, 2.0, 3.0];

    #[test]
    fn greedy_takes_the_first_maximum() {
        let p = Params { temperature: 0.0, top_k: 0, top_p: 1.0 };
        assert_eq!(pick(&LOGITS, &p, 0.99), 1);
    }

    #[test]
    fn top_k_and_top_p_bound_the_choice() {
        let p = Params { temperature: 1.0, top_k: 2, top_p: 1.0 };
        for u in [0.0, 0.3, 0.6, 0.999] {
            assert!(matches!(pick(&LOGITS, &p, u), 1 | 3), "{u}");
        }
        // The two tied tokens hold ~84% of the mass: top_p 0.5 keeps the first of them only.
        let p = Params { temperature: 1.0, top_k: 0, top_p: 0.3 };
        assert_eq!(pick(&LOGITS, &p, 0.999), 1);
        // With everything kept, a high draw reaches the least likely token.
        let p = Params { temperature: 1.0, top_k: 0, top_p: 1.0 };
        assert_eq!(pick(&LOGITS, &p, 0.9999), 0);
    }
}
