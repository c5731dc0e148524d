"""Training throughput: adapterlab vs TRL's SFTTrainer with its defaults, same model, data and LoRA, one run.

    python benchmarks/train_throughput.py [--examples 96] [--out benchmarks/results]

Every configuration trains one epoch over the same length-skewed examples (the first N training rows of the
support-ticket recipe, 127-640 tokens) in its own subprocess, so that peak memory is its own:

- ``peer``: ``trl.SFTTrainer`` with ``SFTConfig`` defaults (bf16 autocast, gradient checkpointing, padded random
  batches of 8, TRL's fused LM-head loss; ``use_cpu=True`` on a CPU, which the bf16 default requires) on the
  conversational prompt/completion records, tokenised by TRL; the model loaded the way a notebook does
  (``AutoModelForCausalLM.from_pretrained``), in a process with torch's and glibc's default memory settings.
  The optimisation settings are the recipe's (learning rate, schedule, warmup, weight decay, clipping,
  optimizer), so that the loss curves can be compared.
- ``ours``: ``adapterlab``'s trainer from the recipe (bf16 weights + autocast, completion-only head, padding-free
  batches with per-sequence attention, freed memory kept for the next step, no gradient checkpointing), in the
  environment ``adapterlab train`` runs in (huge pages: see ``adapterlab.memory``).
- ``ours-padded`` / ``ours-unmapped`` / ``ours-4k-pages``: the same with one lever off (padded, length-grouped
  batches; glibc's default of unmapping large freed blocks; torch's default 4 KiB pages), to measure what each
  is worth.
- ``ours-qlora``: the same with the base in 4-bit NF4 (double quantisation) through bitsandbytes.
- ``ours-seed43`` / ``ours-seed44``: ``ours`` with other seeds; the spread of the validation losses of the three
  seeds is the noise the peer's validation loss is compared with.
- ``ours-fp32`` (only when named in ``--kinds``): ``ours`` in fp32, to measure what bf16 is worth.

Useful tokens/s = non-padding tokens of the epoch / training wall time (the same examples on both sides; ours
are cut to the recipe's ``data.max_tokens``, which leaves 0.2 % fewer tokens than TRL's own tokenisation).
MFU-style utilisation = tokens/s x 4 x parameters / the bf16 matmul peak, the highest of the measurements taken
in the same run (before the workers and after each of them: the speed of the benchmark VM drifts). Both are
reported for the whole epoch and for its steady state (the steps after the first ``WARMUP_STEPS``).
The loss curves of ``ours`` and ``peer`` are drawn side by side; their end-of-epoch validation losses are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import adapterlab  # noqa: F401  (before torch allocates anything, as in the CLI: it asks torch for huge pages)

RECIPE = "recipes/support-tickets.yaml"
# Our configurations: the recipe as is, with one lever switched off, and with a 4-bit base
OURS = {
    "ours": [],
    "ours-padded": ["train.padding_free=false"],
    "ours-unmapped": ["train.keep_freed_memory=false"],
    "ours-4k-pages": [],  # run with THP_MEM_ALLOC_ENABLE=0 (see worker_env)
    "ours-qlora": ["model.quantization=4bit"],
    # The same with other seeds (LoRA initialisation, batch order): the spread of the validation loss they give
    # is the noise against which the peer's loss is compared.
    "ours-seed43": ["seed=43"],
    "ours-seed44": ["seed=44"],
    # Not in the default run (--kinds ours,ours-fp32): what bf16 autocast is worth against fp32
    "ours-fp32": ["train.precision=fp32"],
}
DEFAULT_KINDS = ["peer", *(kind for kind in OURS if kind != "ours-fp32")]


def worker_env(kind: str) -> dict[str, str]:
    """Ours as ``adapterlab train`` runs (huge pages for torch's tensors and, where the CLI restarts with it,
    glibc's heap); the peer as a notebook that never imports adapterlab runs (torch's and glibc's defaults)."""
    from adapterlab.memory import huge_pages_exec_env

    plain = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    if kind in ("peer", "ours-4k-pages"):
        return {**plain, "THP_MEM_ALLOC_ENABLE": "0"}
    return huge_pages_exec_env(["train"], plain) or plain


# The first steps of a process pay for touching its memory for the first time (on the benchmark VM ~13 us of
# kernel time per 4 KiB page: ~5 GB and over 10 s in the first step alone) until the largest batches have been
# seen; steady-state throughput is measured over the second half of the epoch (steps 7-12 of 12), as MFU usually
# is measured after warm-up, for every configuration alike.
WARMUP_STEPS = 6
COMMON = ["train.epochs=1", "train.eval_every=100000", "train.save_every=100000", "train.log_every=1"]


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    import torch

    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - began)
    return 2 * size**3 * repeats / best / 1e9


def prepared(examples: int):
    """The tokenised train/val splits of the recipe (prepared once), first ``examples`` training rows."""
    from datasets import load_from_disk

    from adapterlab.registry import load_recipe
    from adapterlab.runs import RunDir, read_jsonl
    from adapterlab.stages.prepare import prepare

    recipe = load_recipe(RECIPE, ["name=bench-train", *COMMON])
    run = RunDir.for_recipe(recipe)
    if not run.data_meta.is_file():
        prepare(recipe)
    data = load_from_disk(str(run.tokenized))
    readable = read_jsonl(run.split_file("train"))[:examples]
    val = read_jsonl(run.split_file("val"))
    return recipe, data["train"].select(range(examples)), data["val"], readable, val


def worker(kind: str, examples: int) -> dict:
    import torch
    from transformers import TrainerCallback, set_seed

    from adapterlab.registry import as_recipe

    recipe, train_rows, val_rows, readable, val_readable = prepared(examples)
    recipe = as_recipe(recipe, OURS.get(kind, []))
    losses: list[float] = []
    marks: list[tuple[float, int]] = []  # (time, non-padding tokens so far) at the end of every step

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])
                marks.append((time.perf_counter(), int(logs["num_tokens"])))

    set_seed(recipe.seed)
    if kind == "peer":
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTConfig, SFTTrainer

        from adapterlab.models import resolve_base

        base = resolve_base("default")

        def records(rows):
            def reply(row):
                return [{"role": "assistant", "content": row["completion"]}]

            return Dataset.from_list([{"prompt": r["messages"], "completion": reply(r)} for r in rows])

        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(base),
            args=SFTConfig(
                output_dir=str(recipe.run_dir / "peer"),
                num_train_epochs=1,
                # the recipe's optimisation settings, so that the loss curves can be compared; TRL's own
                # defaults for everything that decides its speed (padding, checkpointing, loss, batching)
                learning_rate=recipe.train.learning_rate,
                lr_scheduler_type=recipe.train.lr_scheduler,
                warmup_steps=recipe.train.warmup_ratio,
                weight_decay=recipe.train.weight_decay,
                max_grad_norm=recipe.train.max_grad_norm,
                optim=recipe.train.optimizer,
                logging_steps=1,
                save_strategy="no",
                report_to=[],
                seed=recipe.seed,
                disable_tqdm=True,
                use_cpu=not torch.cuda.is_available(),  # TRL's bf16 default refuses a CPU otherwise
            ),
            train_dataset=records(readable),
            eval_dataset=records(val_readable),
            processing_class=AutoTokenizer.from_pretrained(base),
            peft_config=LoraConfig(
                r=recipe.lora.r,
                lora_alpha=recipe.lora.alpha,
                lora_dropout=recipe.lora.dropout,
                target_modules=recipe.lora.target_modules,
                task_type="CAUSAL_LM",
            ),
            callbacks=[Losses()],
        )
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    else:
        from adapterlab.generative.train import build_trainer
        from adapterlab.models import load_tokenizer, pick_precision, resolve_base
        from adapterlab.runs import RunDir
        from adapterlab.task import TrainContext

        base = resolve_base("default")
        tokenizer = load_tokenizer(base)
        run = RunDir.for_recipe(recipe)
        meta = json.loads(run.data_meta.read_text())
        precision = pick_precision(recipe.train.precision)
        trainer, _ = build_trainer(TrainContext(recipe, run, base, tokenizer, precision, meta, [Losses()]))
        # The trainer's own datasets (TRL built their completion-only labels), cut to the same first rows
        trainer.train_dataset = trainer.train_dataset.select(range(examples))
        trainer.args.eval_strategy = "no"  # like the peer: no validation inside the timed epoch
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
        assert trainer.train_dataset["input_ids"] == train_rows["input_ids"]
        assert len(trainer.eval_dataset) == len(val_rows)
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    val_loss = trainer.evaluate()["eval_loss"]
    params = sum(p.numel() for p in trainer.model.parameters())
    peak_after = matmul_peak_gflops()  # the machine's speed varies: measured again after every worker
    (t0, n0), (t1, n1) = marks[WARMUP_STEPS - 1], marks[-1]
    return {
        "kind": kind,
        "examples": examples,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "steady_tokens_per_s": (n1 - n0) / (t1 - t0),
        "losses": losses,
        "step_seconds": [round(b[0] - a[0], 3) for a, b in pairwise([(began, 0), *marks])],
        "step_tokens": [b[1] - a[1] for a, b in pairwise([(began, 0), *marks])],
        "val_loss": val_loss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params": params,
        "torch_threads": torch.get_num_threads(),
        "matmul_peak_gflops_after": peak_after,
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    styles = {  # the peer wide and underneath, ours dashed on top: where the curves agree both stay visible
        "peer": {"color": "#C44E52", "lw": 4.5, "alpha": 0.45},
        "ours": {"color": "#4C72B0", "lw": 1.6, "ls": "--"},
        "ours-qlora": {"color": "#55A868", "lw": 1.4},
    }
    styles.update({k: {"color": "#4C72B0", "lw": 0.8, "alpha": 0.35} for k in results if k.startswith("ours-seed")})
    for kind, style in styles.items():
        if kind in results:
            r = results[kind]
            label = f"{kind} (val {r['val_loss']:.3f})"
            ax.plot(range(1, len(r["losses"]) + 1), r["losses"], label=label, **style)
    ax.set_xlabel("optimizer step (batch of 8)")
    ax.set_ylabel("train loss (completion tokens)")
    ax.set_title("Same data, model and LoRA: training loss per step")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS))
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.examples)), flush=True)
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prepared(args.examples)  # prepare once, outside the timed workers
    peak = matmul_peak_gflops()
    print(f"bf16 matmul peak: {peak:.0f} GFLOP/s (measured again after every worker)", flush=True)
    results = {}
    for kind in args.kinds.split(","):
        command = [sys.executable, __file__, "--worker", kind, "--examples", str(args.examples)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=worker_env(kind))
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
            raise SystemExit(f"worker {kind} failed")
        results[kind] = json.loads(line.removeprefix("RESULT "))
        r = results[kind]
        print(
            f"{kind:13s} {r['tokens_per_s']:7.1f} tok/s (after step {WARMUP_STEPS}: {r['steady_tokens_per_s']:6.1f})  "
            f"val {r['val_loss']:.3f}  peak RSS {r['peak_rss_mb']:.0f} MB  matmul {r['matmul_peak_gflops_after']:.0f}",
            flush=True,
        )
    # The highest peak measured in the run (before the workers and after each): utilisation is never flattered
    # by a worker that ran while the machine was faster than when the peak was taken.
    peak = max([peak, *(r["matmul_peak_gflops_after"] for r in results.values())])
    summary = {"matmul_peak_gflops": peak, "results": results}
    if "ours" in results:
        ours = results["ours"]
        summary["utilisation_of_bf16_peak"] = ours["tokens_per_s"] * 4 * ours["params"] / (peak * 1e9)
        summary["steady_utilisation_of_bf16_peak"] = ours["steady_tokens_per_s"] * 4 * ours["params"] / (peak * 1e9)
        if "peer" in results:
            summary["speedup_vs_peer"] = ours["tokens_per_s"] / results["peer"]["tokens_per_s"]
        if "peer" in results:
            summary["steady_speedup_vs_peer"] = ours["steady_tokens_per_s"] / results["peer"]["steady_tokens_per_s"]
        if "ours-qlora" in results:
            summary["qlora_rss_vs_lora"] = results["ours-qlora"]["peak_rss_mb"] / ours["peak_rss_mb"]
        seeds = [r["val_loss"] for kind, r in results.items() if kind == "ours" or kind.startswith("ours-seed")]
        if len(seeds) > 1:
            summary["ours_val_loss_over_seeds"] = {"min": min(seeds), "max": max(seeds), "runs": len(seeds)}
        if "peer" in results:
            peer = results["peer"]
            summary["val_loss_ours_minus_peer"] = ours["val_loss"] - peer["val_loss"]
            steps = zip(ours["losses"], peer["losses"], strict=True)
            summary["train_loss_max_abs_diff_vs_peer"] = max(abs(a - b) for a, b in steps)
    (out / "train_throughput.json").write_text(json.dumps(summary, indent=2))
    plot(results, out / "train_loss_curves.png")
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))


if __name__ == "__main__":
    main()
