"""Examples/s of the training step on SST-2 with MiniLM: dynamic padding (length-grouped batches, padded to
the batch's longest example) against fixed padding to 128 tokens. Same examples, same batch size, same model.

    python bench/padding.py --glue-dir ../shared/data/glue --steps 30
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from host import describe  # bench/host.py (bench scripts run with bench/ on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--glue-dir", default=os.environ.get("BAM_GLUE_DIR", "../shared/data/glue"))
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--examples", type=int, default=2000)
    args = ap.parse_args()

    from trainables.data import ExampleStream, load_examples, tokenize_split
    from trainables.model import MultiTaskModel, build_encoder, load_tokenizer
    from trainables.tasks import get_task

    torch.manual_seed(0)
    tok = load_tokenizer(args.model)
    ex = load_examples(task="sst2", split="train", glue_dir=args.glue_dir).subsample(max_examples=args.examples, seed=0)
    split = tokenize_split(ex, tokenizer=tok, max_length=128)
    results = {}
    for mode in ("fixed128", "dynamic"):
        model = MultiTaskModel(build_encoder(args.model, vocab_size=len(tok)), {"sst2": get_task("sst2")})
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
        stream = ExampleStream(split.lengths, batch_size=args.batch_size, seed=0)
        rng = np.random.default_rng(0)
        model.train()
        n = tokens = 0
        t = None
        for step in range(args.steps + 2):                        # 2 warm-up steps
            if step == 2:
                t, n, tokens = time.perf_counter(), 0, 0
            idx = stream.take(args.batch_size) if mode == "dynamic" else rng.choice(len(split), args.batch_size, replace=False)
            b = split.collate(idx)
            if mode == "fixed128":
                pad = 128 - b["input_ids"].shape[1]
                b = {k: torch.nn.functional.pad(v, (0, pad)) if v.ndim == 2 else v for k, v in b.items()}
            logits = model(task="sst2", input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                           token_type_ids=b["token_type_ids"])
            loss = torch.nn.functional.cross_entropy(logits, b["labels"])
            opt.zero_grad(); loss.backward(); opt.step()
            n += len(idx); tokens += int(b["attention_mask"].sum())
        dt = time.perf_counter() - t
        results[mode] = {"examples_per_s": n / dt, "real_tokens_per_s": tokens / dt, "steps": args.steps}
        print(mode, json.dumps(results[mode]))
    ratio = results["dynamic"]["examples_per_s"] / results["fixed128"]["examples_per_s"]
    print(json.dumps({"speedup": ratio, **describe(),
                      "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
