//! The model thread: owns the model and its device, takes jobs from a queue, runs embeddings and
//! predictions in dynamic batches (everything queued when the thread comes round, up to a cap), and
//! interleaves generations one token each in turn, so a long answer never starves a short one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};

use super::backend::Backend;
use super::bert::Bert;
use super::gpt2::{Gpt2, KvCache};
use super::mlp::Mlp;
use super::sample::Params;
use super::text::{Detokenizer, Step, Text};

/// The most sequences (or instances) one batch takes.
pub const MAX_BATCH: usize = 64;
/// The most generations decoded side by side; more wait in the queue.
pub const MAX_ACTIVE: usize = 8;

/// A loaded model on its device.
#[derive(Debug)]
pub enum Model<B: Backend> {
    Bert(Bert<B>),
    Gpt2(Gpt2<B>),
    Mlp(Mlp<B>),
}

/// Work for the model thread.
#[derive(Debug)]
pub enum Job {
    Embed { inputs: Vec<Vec<u32>>, reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>> },
    Predict { rows: Vec<Vec<f32>>, reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>> },
    Generate(Generation),
}

/// One generation request.
#[derive(Debug)]
pub struct Generation {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub params: Params,
    pub seed: u64,
    pub stops: Vec<String>,
    /// Text deltas, then the end. Dropping the receiver (a client that went away) stops the generation.
    pub events: mpsc::UnboundedSender<Event>,
}

/// What a generation reports.
#[derive(Debug, PartialEq)]
pub enum Event {
    Delta(String),
    Done { finish_reason: &'static str, completion_tokens: usize },
    Failed(String),
}

/// Live numbers for `/load` and `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Jobs waiting for the model thread.
    pub queued: AtomicUsize,
    /// Jobs the model thread is working on.
    pub in_flight: AtomicUsize,
    pub tokens_generated: AtomicU64,
    pub sequences_embedded: AtomicU64,
    pub instances_predicted: AtomicU64,
    pub batches: AtomicU64,
    /// Generated tokens per second over the recent past, as f64 bits.
    pub tokens_per_second: AtomicU64,
}

impl Stats {
    pub fn tokens_per_second(&self) -> f64 {
        f64::from_bits(self.tokens_per_second.load(Ordering::Relaxed))
    }
}

struct Active<B: Backend> {
    job: Generation,
    cache: KvCache<B>,
    /// The token to feed next (the last one sampled), or the prompt before the first step.
    next: Vec<u32>,
    rng: rand::rngs::StdRng,
    detok: Detokenizer,
}

/// Runs the model thread until every sender is gone.
#[expect(clippy::needless_pass_by_value, reason = "the model thread owns its device, model and stats")]
pub fn run<B: Backend>(
    backend: B,
    model: Model<B>,
    text: Option<Arc<Text>>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    stats: Arc<Stats>,
) {
    let mut waiting: VecDeque<Generation> = VecDeque::new();
    let mut active: Vec<Active<B>> = Vec::new();
    let mut pending: Vec<Job> = Vec::new();
    let mut window = (Instant::now(), 0u64);
    loop {
        if active.is_empty() && waiting.is_empty() {
            match jobs.blocking_recv() {
                Some(job) => pending.push(job),
                None => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            pending.push(job);
        }
        let (mut embeds, mut predicts) = (Vec::new(), Vec::new());
        for job in pending.drain(..) {
            match job {
                Job::Embed { inputs, reply } => embeds.push((inputs, reply)),
                Job::Predict { rows, reply } => predicts.push((rows, reply)),
                Job::Generate(g) => waiting.push_back(g),
            }
        }
        match &model {
            Model::Bert(bert) => {
                batched(&stats, embeds, |inputs| bert.embed(&backend, inputs), &stats.sequences_embedded)
            }
            Model::Mlp(mlp) => {
                batched(&stats, predicts, |rows| mlp.predict(&backend, rows), &stats.instances_predicted)
            }
            Model::Gpt2(_) => {}
        }
        let Model::Gpt2(gpt2) = &model else {
            // Only a generator takes generations; the HTTP layer never sends them elsewhere.
            waiting.clear();
            continue;
        };
        let Some(text) = &text else { continue };
        while active.len() < MAX_ACTIVE {
            let Some(job) = waiting.pop_front() else { break };
            // In flight before it leaves the queue, so the two never both read zero while it is alive.
            stats.in_flight.fetch_add(1, Ordering::Relaxed);
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            match gpt2.cache(&backend) {
                Ok(cache) => active.push(Active {
                    next: job.prompt.clone(),
                    rng: rand::rngs::StdRng::seed_from_u64(job.seed),
                    detok: Detokenizer::new(job.stops.clone()),
                    cache,
                    job,
                }),
                Err(e) => {
                    let _ = job.events.send(Event::Failed(format!("cannot allocate the KV cache: {e}")));
                    stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        // One token for each active generation, in turn.
        let mut produced = 0;
        active.retain_mut(|a| {
            let (keep, made) = step(&backend, gpt2, text, a);
            produced += u64::from(made);
            if !keep {
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
        stats.tokens_generated.fetch_add(produced, Ordering::Relaxed);
        window.1 += produced;
        let elapsed = window.0.elapsed().as_secs_f64();
        if elapsed >= 1.0 || (active.is_empty() && waiting.is_empty()) {
            if elapsed > 0.0 {
                stats.tokens_per_second.store((window.1 as f64 / elapsed).to_bits(), Ordering::Relaxed);
            }
            window = (Instant::now(), 0);
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, String>>;

/// Runs every queued request of one kind as few batches as the cap allows, and answers each.
fn batched<T: Clone>(
    stats: &Stats,
    requests: Vec<(Vec<T>, Reply)>,
    mut run: impl FnMut(&[T]) -> Result<Vec<Vec<f32>>, String>,
    counter: &AtomicU64,
) {
    let mut requests = requests.into_iter().peekable();
    while requests.peek().is_some() {
        let mut items: Vec<T> = Vec::new();
        let mut replies: Vec<(usize, Reply)> = Vec::new();
        while let Some((inputs, _)) = requests.peek() {
            if !items.is_empty() && items.len() + inputs.len() > MAX_BATCH {
                break;
            }
            let Some((inputs, reply)) = requests.next() else { break };
            stats.in_flight.fetch_add(1, Ordering::Relaxed);
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            replies.push((inputs.len(), reply));
            items.extend(inputs);
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        counter.fetch_add(items.len() as u64, Ordering::Relaxed);
        let result = run(&items);
        let mut outputs = result.as_ref().map(|o| o.iter().cloned()).ok();
        for (n, reply) in replies {
            let answer = match (&result, outputs.as_mut()) {
                (Ok(_), Some(out)) => Ok(out.by_ref().take(n).collect()),
                (Err(e), _) => Err(e.clone()),
                (Ok(_), None) => Err("internal error".to_owned()),
            };
            let _ = reply.send(answer);
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Feeds one generation its next token(s) and samples the following one. Returns whether it goes on
/// and whether a token was made.
fn step<B: Backend>(backend: &B, model: &Gpt2<B>, text: &Text, a: &mut Active<B>) -> (bool, bool) {
    if a.job.events.is_closed() {
        // The client went away: stop spending the device on it.
        return (false, false);
    }
    (step_inner(backend, model, text, a), true)
}

fn step_inner<B: Backend>(backend: &B, model: &Gpt2<B>, text: &Text, a: &mut Active<B>) -> bool {
    let logits = match model.forward(backend, &mut a.cache, &a.next, false) {
        Ok(l) => l,
        Err(e) => {
            let _ = a.job.events.send(Event::Failed(format!("the model failed: {e}")));
            return false;
        }
    };
    let uniform: f32 = a.rng.random();
    let id = match backend.sample(&logits, &a.job.params, uniform) {
        Ok(id) => id,
        Err(e) => {
            let _ = a.job.events.send(Event::Failed(format!("sampling failed: {e}")));
            return false;
        }
    };
    a.next = vec![id];
    let finish = |a: &mut Active<B>, reason: &'static str, tail: String| {
        if !tail.is_empty() {
            let _ = a.job.events.send(Event::Delta(tail));
        }
        let _ = a.job.events.send(Event::Done { finish_reason: reason, completion_tokens: a.detok.tokens() });
        false
    };
    if Some(id) == text.eos {
        let tail = a.detok.finish(text);
        return finish(a, "stop", tail);
    }
    match a.detok.push(text, id) {
        Step::Stopped(tail) => finish(a, "stop", tail),
        Step::Delta(delta) => {
            if !delta.is_empty() {
                let _ = a.job.events.send(Event::Delta(delta));
            }
            if a.detok.tokens() >= a.job.max_tokens || a.cache.len >= model.context {
                let tail = a.detok.finish(text);
                return finish(a, "length", tail);
            }
            true
        }
    }
}
