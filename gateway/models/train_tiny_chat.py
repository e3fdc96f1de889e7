#!/usr/bin/env python3
"""Trains `weir-tiny-chat`, the small GPT-2 the default configuration serves for chat, and writes it
beside this script (config.json, model.safetensors in f16, tokenizer.json). The result is committed, so
nobody needs to run this; it is here so the model can be remade or improved.

The training text is Jules Verne's "Around the World in Eighty Days" (public domain; Project
Gutenberg #103). Cargo's registry has a copy in the `esaxx-rs` crate (data/eighty.txt), which is where
this script looks unless given a path. Paragraphs are laid out as a User/Assistant transcript, so the
model learns the worker's chat template (see gateway/src/worker/text.rs) and ends its turns.

    python3 -m pip install torch transformers tokenizers safetensors
    python3 gateway/models/train_tiny_chat.py [TEXT] [--minutes 6]

The committed model came from `--minutes 7` with one PyTorch thread on a busy 2-core machine: 457
steps, final training loss 4.7. It writes Verne-flavoured English, not answers; more minutes help.
"""

import argparse
import glob
import os
import pathlib
import random
import time

import torch

HERE = pathlib.Path(__file__).resolve().parent / "weir-tiny-chat"


def find_text():
    home = os.path.expanduser("~/.cargo/registry/src")
    found = sorted(glob.glob(f"{home}/*/esaxx-rs-*/data/eighty.txt"))
    if not found:
        raise SystemExit("pass the path of a plain-text book (e.g. Project Gutenberg #103)")
    return found[-1]


def paragraphs(path):
    text = open(path, encoding="utf-8-sig").read()
    start = text.find("*** START OF")
    end = text.find("*** END OF")
    body = text[text.find("\n", start) + 1 : end if end > 0 else None] if start >= 0 else text
    paras = [" ".join(p.split()) for p in body.split("\n\n")]
    return [p for p in paras if len(p) > 40]


def transcript(paras):
    # Consecutive paragraphs as turns: the model continues the story, and its turn ends before "User:".
    out = []
    for i in range(0, len(paras) - 1, 2):
        out.append(f"User: {paras[i]}\n\nAssistant: {paras[i + 1]}\n\n")
    return "".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("text", nargs="?")
    ap.add_argument("--minutes", type=float, default=6.0)
    args = ap.parse_args()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2LMHeadModel
    from safetensors.torch import save_file

    random.seed(0)
    torch.manual_seed(0)
    corpus = transcript(paragraphs(args.text or find_text()))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([corpus], trainer=trainer)
    ids = torch.tensor(tok.encode(corpus).ids)
    eos = tok.token_to_id("<|endoftext|>")
    config = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=256,
        n_embd=128,
        n_layer=4,
        n_head=4,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    ctx, batch = 128, 16
    deadline = time.time() + args.minutes * 60
    step = 0
    model.train()
    while time.time() < deadline:
        starts = torch.randint(0, len(ids) - ctx - 1, (batch,))
        x = torch.stack([ids[s : s + ctx] for s in starts])
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f}", flush=True)
    model.eval()
    HERE.mkdir(parents=True, exist_ok=True)
    tok.save(str(HERE / "tokenizer.json"))
    config.save_pretrained(HERE)
    # f16 halves the file; the worker converts to f32 when it loads.
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items() if not k.startswith("lm_head")}
    save_file(state, str(HERE / "model.safetensors"))
    print(f"trained {step} steps; final loss {loss.item():.3f}; wrote {HERE}")


if __name__ == "__main__":
    main()
