"""Continue training a model exported by `moelab export --format hf`, on the PyTorch side.

Not run by CI (moelab's tests need no Python). A minimal plain-PyTorch loop; under `accelerate launch`
(DDP, FSDP or DeepSpeed, configured with `accelerate config`) the same script runs on many GPUs.

    moelab export runs/small/checkpoint --format hf --out hf/small
    accelerate launch examples/hf_continue_training.py hf/small corpus.txt hf/big --steps 1000
    moelab import hf/big --out runs/big/checkpoint

Requires: torch, transformers, accelerate.
"""

import argparse

import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast


def batches(ids: torch.Tensor, seq: int, batch: int, generator: torch.Generator):
    """Random windows of seq + 1 tokens from one long token stream (as moelab's corpora do)."""
    while True:
        starts = torch.randint(0, ids.numel() - seq - 1, (batch,), generator=generator)
        yield torch.stack([ids[s : s + seq + 1] for s in starts.tolist()])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("text_file")
    p.add_argument("out_dir")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    a = p.parse_args()

    acc = Accelerator()
    # The export writes tokenizer.json (moelab's byte tokenizer, or the imported model's own).
    tok = PreTrainedTokenizerFast(tokenizer_file=f"{a.model_dir}/tokenizer.json")
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, torch_dtype=torch.float32)
    # MoE layouts (mixtral, qwen2_moe, qwen3_moe, olmoe) add their load-balancing loss,
    # router_aux_loss_coef x the Switch loss, when the router logits are returned.
    if hasattr(model.config, "output_router_logits"):
        model.config.output_router_logits = True

    with open(a.text_file, encoding="utf-8") as f:
        ids = torch.tensor(tok.encode(f.read()), dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.1)
    model, opt = acc.prepare(model, opt)
    model.train()
    data = batches(ids, a.seq, a.batch, torch.Generator().manual_seed(acc.process_index))
    for step in range(1, a.steps + 1):
        x = next(data).to(acc.device)
        # labels = inputs: transformers shifts them by one inside the model.
        loss = model(input_ids=x, labels=x).loss
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step % 10 == 0 and acc.is_main_process:
            print(f"step {step}: loss {loss.item():.4f}")

    acc.wait_for_everyone()
    # safetensors, as `moelab import` reads it (sharded with an index when large).
    acc.unwrap_model(model).save_pretrained(a.out_dir, safe_serialization=True, is_main_process=acc.is_main_process, save_function=acc.save)
    if acc.is_main_process:
        tok.save_pretrained(a.out_dir)


if __name__ == "__main__":
    main()
