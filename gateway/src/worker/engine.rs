//! The model thread: owns the model and its device, takes jobs from a queue, runs embeddings and
//! predictions in dynamic batches (everything queued when the thread comes round, up to a cap), and
//! runs generations by continuous batching: each turn, generations that arrived have their prompt
//! run and their first token chosen, then every active generation advances one token in a single
//! batched decode step (one pass over the weights for all of them), each with its own KV cache,
//! sampling settings and random stream. Generations join and leave between steps, so a long answer
//! never holds up a short one, and throughput grows with the number of streams.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};

use super::backend::Backend;
use super::bert::Bert;
use super::gpt2::{Decoder, Gpt2, KvCache};
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
    /// Batched decode steps run (each advances every active generation by one token).
    pub decode_steps: AtomicU64,
    /// Generated tokens per second over the recent past, as f64 bits.
    pub tokens_per_second: AtomicU64,
}

impl Stats {
    pub fn tokens_per_second(&self) -> f64 {
        f64::from_bits(self.tokens_per_second.load(Ordering::Relaxed))
    }
}

/// A generation being decoded. Its KV cache sits at the same index of the engine's `caches`, so a
/// decode step can take all the caches as one slice.
struct Active {
    job: Generation,
    /// The token to feed next (the last one chosen).
    next: u32,
    rng: rand::rngs::StdRng,
    detok: Detokenizer,
}

/// The generations being decoded, and what their steps reuse.
struct Generations<B: Backend> {
    active: Vec<Active>,
    caches: Vec<KvCache<B>>,
    /// Caches of finished generations, kept for the next ones (a GPT-2 small cache is 75 MB).
    spare: Vec<KvCache<B>>,
    decoder: Option<Decoder<B>>,
    /// Each step's input ids and which generations go on after it, kept so a step allocates nothing.
    ids: Vec<u32>,
    keep: Vec<bool>,
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
    let mut gens = Generations {
        active: Vec::new(),
        caches: Vec::new(),
        spare: Vec::new(),
        decoder: None,
        ids: Vec::new(),
        keep: Vec::new(),
    };
    let mut pending: Vec<Job> = Vec::new();
    let mut window = (Instant::now(), 0u64);
    loop {
        if gens.active.is_empty() && waiting.is_empty() {
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
            Model::Bert(bert) => batched(
                &stats,
                embeds,
                |inputs| backend.compute(|| bert.embed(&backend, inputs)),
                &stats.sequences_embedded,
            ),
            Model::Mlp(mlp) => batched(
                &stats,
                predicts,
                |rows| backend.compute(|| mlp.predict(&backend, rows)),
                &stats.instances_predicted,
            ),
            Model::Gpt2(_) => {}
        }
        let Model::Gpt2(gpt2) = &model else {
            // Only a generator takes generations; the HTTP layer never sends them elsewhere.
            waiting.clear();
            continue;
        };
        let Some(text) = &text else { continue };
        let produced = backend.compute(|| generation_turn(&backend, gpt2, text, &stats, &mut waiting, &mut gens));
        stats.tokens_generated.fetch_add(produced, Ordering::Relaxed);
        window.1 += produced;
        let elapsed = window.0.elapsed().as_secs_f64();
        if elapsed >= 1.0 || (gens.active.is_empty() && waiting.is_empty()) {
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

/// One turn of continuous batching: admits waiting generations (their prompt in one forward pass
/// each, and their first token), drops those whose client went away, then advances every active
/// one by a token in one batched step. Returns the tokens made.
fn generation_turn<B: Backend>(
    backend: &B,
    model: &Gpt2<B>,
    text: &Text,
    stats: &Stats,
    waiting: &mut VecDeque<Generation>,
    g: &mut Generations<B>,
) -> u64 {
    let mut produced = 0;
    while g.active.len() < MAX_ACTIVE {
        let Some(job) = waiting.pop_front() else { break };
        // In flight before it leaves the queue, so the two never both read zero while it is alive.
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        if job.events.is_closed() {
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        let cache = match g.spare.pop() {
            Some(mut c) => {
                c.len = 0;
                Ok(c)
            }
            None => model.cache(backend),
        };
        let mut cache = match cache {
            Ok(c) => c,
            Err(e) => {
                let _ = job.events.send(Event::Failed(format!("cannot allocate the KV cache: {e}")));
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
        };
        let mut a = Active {
            next: 0,
            rng: rand::rngs::StdRng::seed_from_u64(job.seed),
            detok: Detokenizer::new(job.stops.clone()),
            job,
        };
        let chosen = model.forward(backend, &mut cache, &a.job.prompt, false).and_then(|logits| {
            let uniform: f32 = a.rng.random();
            backend.sample_row(&logits, model.vocab, 0, &a.job.params, uniform)
        });
        produced += u64::from(chosen.is_ok());
        if take(model, text, &mut a, chosen, cache.len) {
            g.active.push(a);
            g.caches.push(cache);
        } else {
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            g.spare.push(cache);
        }
    }
    // A client that went away stops costing the device anything.
    retire(g, stats, |a| !a.job.events.is_closed());
    if g.active.is_empty() {
        return produced;
    }
    if g.decoder.is_none() {
        match model.decoder(backend, MAX_ACTIVE) {
            Ok(d) => g.decoder = Some(d),
            Err(e) => {
                fail_all(g, stats, &format!("cannot allocate the decode buffers: {e}"));
                return produced;
            }
        }
    }
    let Some(decoder) = g.decoder.as_mut() else { return produced };
    g.ids.clear();
    g.ids.extend(g.active.iter().map(|a| a.next));
    stats.decode_steps.fetch_add(1, Ordering::Relaxed);
    let logits = match model.step(backend, decoder, &mut g.caches, &g.ids) {
        Ok(l) => l,
        Err(e) => {
            fail_all(g, stats, &format!("the model failed: {e}"));
            return produced;
        }
    };
    g.keep.clear();
    for (row, (a, cache)) in g.active.iter_mut().zip(&g.caches).enumerate() {
        let uniform: f32 = a.rng.random();
        let chosen = backend.sample_row(logits, model.vocab, row, &a.job.params, uniform);
        produced += u64::from(chosen.is_ok());
        g.keep.push(take(model, text, a, chosen, cache.len));
    }
    let keep = std::mem::take(&mut g.keep);
    let mut flags = keep.iter();
    retire(g, stats, |_| flags.next().copied().unwrap_or(false));
    g.keep = keep;
    produced
}

/// Keeps the generations `alive` says to keep (in order) and returns the others' caches to the
/// spares.
fn retire<B: Backend>(g: &mut Generations<B>, stats: &Stats, mut alive: impl FnMut(&Active) -> bool) {
    let mut i = 0;
    while i < g.active.len() {
        if alive(&g.active[i]) {
            i += 1;
        } else {
            // `remove`, not `swap_remove`: the order of the rest is kept, so `alive` sees them in turn.
            g.active.remove(i);
            g.spare.push(g.caches.remove(i));
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn fail_all<B: Backend>(g: &mut Generations<B>, stats: &Stats, why: &str) {
    for a in &g.active {
        let _ = a.job.events.send(Event::Failed(why.to_owned()));
    }
    retire(g, stats, |_| false);
}

/// Takes a generation's newly chosen token: sends its text, or finishes the generation (end of
/// text, a stop sequence, its token limit, the context window, or a failure). Returns whether it
/// goes on; `filled` is how many positions its cache holds.
fn take<B: Backend>(
    model: &Gpt2<B>,
    text: &Text,
    a: &mut Active,
    chosen: Result<u32, super::backend::DeviceError>,
    filled: usize,
) -> bool {
    let id = match chosen {
        Ok(id) => id,
        Err(e) => {
            let _ = a.job.events.send(Event::Failed(format!("the model failed: {e}")));
            return false;
        }
    };
    a.next = id;
    let finish = |a: &mut Active, reason: &'static str, tail: String| {
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
            if a.detok.tokens() >= a.job.max_tokens || filled >= model.context {
                let tail = a.detok.finish(text);
                return finish(a, "length", tail);
            }
            true
        }
    }
}
