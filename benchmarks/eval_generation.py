"""Evaluation generation: our batched backend vs one-at-a-time ``generate()`` (the notebook way), one run.

    python benchmarks/eval_generation.py [--run runs/support-tickets] [--prompts 64] [--max-new-tokens 128]

Same 64 prompts (the run's test and validation splits), same loaded model (base + adapter, the precision
evaluation uses), greedy decoding with the same stop tokens. The peer renders each prompt with the chat
template and calls ``model.generate`` on it alone, as a notebook loop does. Reports examples/s for both, the
speed-up, and how many replies agree word for word (batched left-padding can change the last bits of a
logit, so a few greedy replies may diverge late).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/support-tickets")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    import torch

    from adapterlab.generation import Decoding, TransformersGenerator, stop_token_ids
    from adapterlab.models import load_with_adapter, pick_precision
    from adapterlab.runs import AdapterInfo, RunDir, read_jsonl

    run = RunDir(Path(args.run))
    rows = (read_jsonl(run.split_file("test")) + read_jsonl(run.split_file("val")))[: args.prompts]
    prompts = [r["messages"] for r in rows]
    precision = pick_precision("auto")
    model, tokenizer = load_with_adapter(AdapterInfo.read(run.root), precision, adapter_name="adapter")
    decoding = Decoding(max_new_tokens=args.max_new_tokens)

    began = time.perf_counter()
    generator = TransformersGenerator(model, tokenizer, args.batch_size)
    ours = generator.generate(prompts, "adapter", decoding, label="batched")
    ours_seconds = time.perf_counter() - began

    began = time.perf_counter()
    peer = []
    for messages in prompts:  # the notebook loop
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(
                **ids,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                eos_token_id=stop_token_ids(tokenizer, model),
                pad_token_id=tokenizer.pad_token_id,
            )
        peer.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    peer_seconds = time.perf_counter() - began

    agree = sum(a.text == b for a, b in zip(ours, peer, strict=True))
    result = {
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "precision": precision,
        "batched_examples_per_s": len(prompts) / ours_seconds,
        "one_at_a_time_examples_per_s": len(prompts) / peer_seconds,
        "speedup": peer_seconds / ours_seconds,
        "batched_seconds": ours_seconds,
        "one_at_a_time_seconds": peer_seconds,
        "identical_replies": agree,
        "torch_threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_generation.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
