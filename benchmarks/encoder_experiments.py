"""What the encoder experiments (encoder_finetune.py, encoder_distill.py, verifier_experiment.py) share."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgecache.evalrun import balanced_report
from edgecache.evaluation import pairwise, pairwise_hits, sweep_of
from edgecache.metrics import Scores, at, best
from edgecache.modelbuild import source_model_dir


def add_run_arguments(ap, out) -> None:
    """The flags every encoder experiment takes: CPU threads, seed, where the JSON goes."""
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=out)


def minilm(threads: int, seed: int):
    """(tokenizer, model) of the packaged all-MiniLM-L6-v2 in torch, offline, seeded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    src = source_model_dir()
    model = AutoModel.from_pretrained(str(src), attn_implementation="eager")
    return AutoTokenizer.from_pretrained(str(src)), model


def lower_states(
    bert, low: int, input_ids: list[list[int]], token_type_ids: list[list[int]] | None = None
) -> list:
    """Each sequence's hidden states after the embeddings and layers 1..`low` (fp16, no padding).

    Computed once so that only the layers above are run while training on a 2-core CPU.
    """
    import torch

    lengths = np.array([len(x) for x in input_ids])
    states = [torch.empty(0)] * len(input_ids)
    order = np.argsort(lengths)
    with torch.no_grad():
        for s in range(0, len(order), 256):
            chunk = order[s : s + 256]
            width = int(lengths[chunk].max())
            ids, types, mask = (torch.zeros(len(chunk), width, dtype=torch.long) for _ in range(3))
            for j, i in enumerate(chunk):
                ids[j, : lengths[i]] = torch.tensor(input_ids[i])
                if token_type_ids is not None:
                    types[j, : lengths[i]] = torch.tensor(token_type_ids[i])
                mask[j, : lengths[i]] = 1
            hidden = run_layers(
                bert.encoder.layer[:low], bert.embeddings(input_ids=ids, token_type_ids=types), mask
            )
            for j, i in enumerate(chunk):
                states[i] = hidden[j, : lengths[i]].to(torch.float16).clone()
            if s // 256 % 50 == 0:
                print(f"frozen layers 1-{low}: {s}/{len(input_ids)} sequences", flush=True)
    return states


def padded(states: list, rows: list[int]):
    """(hidden, mask) of those states as one zero-padded float32 batch."""
    import torch

    width = max(states[i].shape[0] for i in rows)
    hidden = torch.zeros(len(rows), width, states[rows[0]].shape[1])
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for j, i in enumerate(rows):
        hidden[j, : states[i].shape[0]] = states[i].float()
        mask[j, : states[i].shape[0]] = 1
    return hidden, mask


def run_layers(layers, hidden, mask):
    """BERT layers on hidden states, padding (mask 0) masked out of attention."""
    import torch

    extended = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    for layer in layers:
        out = layer(hidden, attention_mask=extended)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def warmup_then_decay(optimizer, total_steps: int, warmup_fraction: float):
    """Linear warm-up over the first steps, then linear decay to zero at `total_steps`."""
    import torch

    warmup = max(1, int(warmup_fraction * total_steps))
    decay = max(1, total_steps - warmup)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / warmup if s < warmup else max(0.0, (total_steps - s) / decay)
    )


def chosen_on_validation(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], y: dict[str, np.ndarray], dtype: str = "f32"
) -> tuple[Scores, Scores]:
    """The pairwise protocol: the best-F1 threshold on validation, and test at that threshold."""
    sweeps = {split: pairwise(a[split], b[split], y[split], dtype) for split in ("validation", "test")}
    chosen = best(sweeps["validation"])
    return chosen, at(sweeps["test"], chosen.threshold)


def balanced_on_validation(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], y: dict[str, np.ndarray], dtype: str = "f32"
) -> dict:
    """The same on MeanCache's half-duplicate construction (`evalrun.balanced_report`)."""
    hits = {split: pairwise_hits(a[split], b[split], dtype) for split in ("validation", "test")}
    return balanced_report(lambda split, rows: sweep_of(hits[split], y[split], rows=rows), y)
