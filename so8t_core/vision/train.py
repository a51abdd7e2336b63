"""Training and scoring for notebook 05: the tower's contrastive pretraining, adapter training, held-out scores.

Tower pretraining (SigLIP's sigmoid loss): every image/caption pair in a batch is an independent binary
classification, positive when the captions are equal (synthetic captions repeat, so equal captions are not
negatives), with a learned temperature and bias:

    loss = -1/B * sum_ij log sigmoid( z_ij * (exp(t) <x_i, y_j> + b) ),   z_ij = +1 if caption_i == caption_j else -1

Captions are encoded by mean-pooled token embeddings of the LM's tokenizer ids plus a linear map (a bag of words:
enough for captions like "three red circles"). Adapter training is next-token loss on the answer tokens only.

Scoring uses teacher forcing: a greedy answer equals the target exactly when, fed the target, the model's arg-max
at every answer position (and at the closing ``<|end|>``) is the target token -- so exact match needs one forward
pass per batch instead of a decode loop, and gives the same number as greedy decoding stopped at ``<|end|>``.

Explained in notebooks/05_visual_adapter.ipynb.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from so8t_core.batching import masked_mean, right_pad
from so8t_core.config import check
from so8t_core.stats import crossed_test
from so8t_core.text import normalize_text
from so8t_core.think import END_OF_TURN, chat_turn, stop_ids
from so8t_core.verdicts import need
from so8t_core.vision.data import ImageSpec, VisualSample, to_pixels
from so8t_core.vision.model import VisualLM

Row = tuple[int, str, str, str]  # (image index, prompt, target, kind)


# --- tower pretraining ---


class CaptionEncoder(nn.Module):
    """Mean-pooled token embeddings and a linear map: (B, T) ids -> (B, D) caption embeddings."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.proj(masked_mean(self.embed(ids), mask))  # (B, D)


def sigmoid_contrastive_loss(img: Tensor, txt: Tensor, log_t: Tensor, bias: Tensor, same: Tensor) -> Tensor:
    """SigLIP's pairwise sigmoid loss.

    Args:
        img: (B, D) image embeddings; txt: (B, D) caption embeddings (both L2-normalised here).
        log_t: log temperature; bias: logit bias (scalars).
        same: (B, B) bool, True where image i and caption j describe the same thing.
    Returns:
        Scalar loss (sum over pairs / B, as in the SigLIP paper).
    """
    logits = log_t.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T + bias  # (B, B)
    z = same.float() * 2 - 1
    return -F.logsigmoid(z * logits).sum() / img.shape[0]


def _caption_ids(tokenizer: Any, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
    enc = tokenizer(list(texts), add_special_tokens=False, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def pretrain_tower(
    tower: nn.Module,
    tokenizer: Any,
    samples: list[VisualSample],
    spec: ImageSpec,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
) -> tuple[CaptionEncoder, list[dict[str, float]]]:
    """Train ``tower`` (its pooled output) against a caption encoder with the sigmoid loss.

    Args:
        tower: a SigLIP vision model (trained in place).
        tokenizer: the LM's tokenizer (caption ids).
        samples: training images; each step draws a batch and one caption language per image.
        spec: the tower's ``ImageSpec``.
        steps, batch_size, lr: AdamW schedule (constant lr).
        seed: batch order.
    Returns:
        The caption encoder and one record per step (step, loss, t, b).
    Explained in notebooks/05_visual_adapter.ipynb.
    """
    gen = torch.Generator().manual_seed(seed)
    dim = int(tower.config.hidden_size)
    text = CaptionEncoder(len(tokenizer), dim)
    log_t, bias = nn.Parameter(torch.tensor(2.3)), nn.Parameter(torch.tensor(-10.0))  # SigLIP's init
    opt = torch.optim.AdamW([*tower.parameters(), *text.parameters(), log_t, bias], lr=lr, weight_decay=1e-4)
    pixels = to_pixels([s.image for s in samples], spec)
    tower.train()
    records = []
    for step in tqdm(range(steps), desc="tower pretraining"):
        idx = torch.randint(len(samples), (batch_size,), generator=gen)
        use_ja = torch.rand(batch_size, generator=gen) < 0.5
        caps = [samples[i].caption_ja if ja else samples[i].caption_en for i, ja in zip(idx.tolist(), use_ja.tolist())]
        keys = [samples[i].caption_en for i in idx.tolist()]  # language-free identity of the scene description
        same = torch.tensor([[a == b for b in keys] for a in keys])
        loss = sigmoid_contrastive_loss(
            tower(pixel_values=pixels[idx]).pooler_output, text(*_caption_ids(tokenizer, caps)), log_t, bias, same
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        records.append({"step": step, "loss": loss.item(), "t": log_t.exp().item(), "b": bias.item()})
    tower.eval()
    return text, records


def retrieval_accuracy(
    tower: nn.Module, text: CaptionEncoder, tokenizer: Any, samples: list[VisualSample], spec: ImageSpec
) -> float:
    """Image -> caption top-1 accuracy among the distinct English captions of ``samples`` (chance = 1 / #captions)."""
    hits = retrieval_hits(tower, text, tokenizer, samples, spec)
    return sum(hits) / len(hits)


@torch.no_grad()
def retrieval_hits(
    tower: nn.Module, text: CaptionEncoder, tokenizer: Any, samples: list[VisualSample], spec: ImageSpec
) -> list[bool]:
    """Per image: is its caption the top-1 among the distinct English captions of ``samples``?"""
    caps = sorted({s.caption_en for s in samples})
    img = F.normalize(tower(pixel_values=to_pixels([s.image for s in samples], spec)).pooler_output, dim=-1)
    txt = F.normalize(text(*_caption_ids(tokenizer, caps)), dim=-1)
    pred = (img @ txt.T).argmax(-1).tolist()
    return [caps[p] == s.caption_en for p, s in zip(pred, samples)]


# --- token rows and batches ---


def encode_row(tokenizer: Any, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Ids of ``<s>`` + the chat prompt + target + ``<|end|>``, and labels that are -100 except on target + end."""
    head = [tokenizer.bos_token_id, *tokenizer(chat_turn(prompt), add_special_tokens=False)["input_ids"]]
    tail = [*tokenizer(target, add_special_tokens=False)["input_ids"], tokenizer.convert_tokens_to_ids(END_OF_TURN)]
    return head + tail, [-100] * len(head) + tail


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded (input_ids, attention_mask, labels), each (B, T); each row's labels are as long as its ids."""
    ids, mask = right_pad([x for x, _ in encoded], pad_id)  # (B, T) each
    labels, _ = right_pad([y for _, y in encoded], -100)  # (B, T): same lengths as the ids
    return ids, mask, labels


@torch.no_grad()
def calibrate_fusion(vlm: VisualLM, tokenizer: Any, rows: list[Row]) -> None:
    """Set the fusion layer's text mean from the soul-mixed states of ``rows`` (text only, no image)."""
    ids, mask, _ = collate([encode_row(tokenizer, p, t) for _, p, t, _ in rows], tokenizer.pad_token_id)
    vlm.fusion.calibrate(vlm.soul.mix(vlm.soul.hidden(ids, mask)), mask)


def train_adapter(
    vlm: VisualLM,
    tokenizer: Any,
    pixels: Tensor,
    rows: list[Row],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    blind: bool = False,
) -> list[dict[str, float]]:
    """Train only ``vlm``'s adapter and fusion layer on (image, prompt, target) rows.

    Args:
        vlm: the visual LM (its soul and tower are frozen).
        tokenizer: the LM's tokenizer.
        pixels: (n_images, 3, S, S) pixel values indexed by the rows' image index.
        rows: training rows (``vision_data.text_tasks``).
        steps, batch_size, lr: AdamW with cosine decay to 10 %.
        seed: batch order.
        blind: feed one constant blank image instead of the real ones (the text-only baseline with the same
            trainable parameters: it can learn answer priors but never sees the image).
    Returns:
        One record per step (step, loss, visual path weight).
    Explained in notebooks/05_visual_adapter.ipynb.
    """
    rng = random.Random(seed)
    encoded = [encode_row(tokenizer, p, t) for _, p, t, _ in rows]
    blank = torch.zeros_like(pixels[:1])  # mid-grey after normalisation: the same input for every row
    calibrate_fusion(vlm, tokenizer, rows[: 8 * batch_size])
    opt = torch.optim.AdamW(vlm.trainable_parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * s / steps)))
    vlm.train()
    records = []
    for step in tqdm(range(steps), desc="adapter training" + (" (blind)" if blind else "")):
        pick = [rng.randrange(len(rows)) for _ in range(batch_size)]
        ids, mask, labels = collate([encoded[i] for i in pick], tokenizer.pad_token_id)
        px = blank.expand(batch_size, -1, -1, -1) if blind else pixels[[rows[i][0] for i in pick]]
        loss = vlm(ids, mask, px, labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        records.append({"step": step, "loss": loss.item()})
    vlm.eval()
    return records


# --- scoring ---


@torch.no_grad()
def score_rows(
    vlm: VisualLM, tokenizer: Any, pixels: Tensor | None, rows: list[Row], batch_size: int = 64, blind: bool = False
) -> list[dict[str, Any]]:
    """Teacher-forced scores per row: exact (every target token and the end token are the arg-max) and
    the count of correct target tokens.

    Args:
        pixels: as in ``train_adapter``; None scores the LM without any image (the text-only model).
        blind: use the constant blank image (the blind baseline).
    Returns:
        ``{"kind", "exact", "correct", "tokens"}`` per row, in order.
    """
    encoded = [encode_row(tokenizer, p, t) for _, p, t, _ in rows]
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        ids, mask, labels = collate(encoded[i : i + batch_size], tokenizer.pad_token_id)
        px = None
        if pixels is not None:
            px = torch.zeros_like(pixels[:1]).expand(len(chunk), -1, -1, -1) if blind else pixels[[r[0] for r in chunk]]
        pred = vlm(ids, mask, px).logits[:, :-1].argmax(-1)  # (B, T-1) predicts positions 1..T-1
        target = labels[:, 1:]
        scored = target != -100
        hit = (pred == target) & scored
        for r, row in enumerate(chunk):
            n = int(scored[r].sum())
            out.append({"kind": row[3], "exact": bool(hit[r].sum() == n), "correct": int(hit[r].sum()), "tokens": n})
    return out


def summarise(scores: list[dict[str, Any]]) -> dict[str, float]:
    """Exact match per question kind and over all questions, and token accuracy on captions."""
    by = defaultdict(list)
    for s in scores:
        by[s["kind"]].append(s)
    out = {f"em_{k}": sum(s["exact"] for s in v) / len(v) for k, v in sorted(by.items()) if k != "caption"}
    qa = [s for s in scores if s["kind"] != "caption"]
    out["em_all"] = sum(s["exact"] for s in qa) / max(len(qa), 1)
    caps = by.get("caption", [])
    if caps:
        out["caption_token_acc"] = sum(s["correct"] for s in caps) / sum(s["tokens"] for s in caps)
    return out


@torch.no_grad()
def visual_path_weight(vlm: VisualLM, tokenizer: Any, pixels: Tensor, rows: list[Row], batch_size: int = 64) -> float:
    """Mean weight the fusion layer gives the visual path over the answer positions of ``rows`` (real prompts with
    their images, teacher-forced), in [0, 1]."""
    encoded = [encode_row(tokenizer, p, t) for _, p, t, _ in rows]
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        ids, mask, labels = collate(encoded[i : i + batch_size], tokenizer.pad_token_id)
        t, prefix = vlm.text_states(ids, mask, pixels[[r[0] for r in rows[i : i + batch_size]]])
        w = vlm.fusion.path_weights(t, prefix)[..., 1]  # (B, T)
        scored = (labels != -100).to(w.device)
        total, count = total + float(w[scored].sum()), count + int(scored.sum())
    return total / max(count, 1)


def paired_difference(
    a: list[dict[str, Any]], b: list[dict[str, Any]], rows: list[Row], n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Exact-match difference b - a over the question rows (captions left out), tested by ``stats.crossed_test``
    with *images* as the resampling unit: all questions about one image move together, since they share it.

    Args:
        a, b: ``score_rows`` output of two variants on the same ``rows``.
        rows: the scored rows (their image index is the resampling unit).
    Returns:
        ``{"diff", "ci95": [lo, hi], "p", "images", "questions"}``.
    """
    check(len(a) == len(b) == len(rows), "scores", (len(a), len(b), len(rows)), "need one score per row in each")
    keep = [i for i, row in enumerate(rows) if row[3] != "caption"]
    check(len(keep) > 0, "rows", len(rows), "no question rows to compare")
    d = np.array([[float(b[i]["exact"]) - float(a[i]["exact"]) for i in keep]])  # (1 seed, questions)
    images = [rows[i][0] for i in keep]
    t = crossed_test(d, images, n_boot=n_boot, seed=seed)
    return {"diff": t["estimate"], "ci95": [t["lo"], t["hi"]], "p": t["p"], "images": t["n_clusters"],
            "questions": len(keep)}  # fmt: skip


@torch.no_grad()
def greedy_answer(
    vlm: VisualLM, tokenizer: Any, prompt: str, pixel_values: Tensor | None = None, max_new_tokens: int = 12
) -> str:
    """Greedy decode after ``prompt`` (with the image's visual prefix when given) until ``<|end|>``."""
    ids, _ = encode_row(tokenizer, prompt, "")
    ids = ids[:-1]  # drop the end token that encode_row appends to the (empty) target
    prefix = vlm.visual_prefix(pixel_values) if pixel_values is not None else None
    stops = stop_ids(tokenizer)
    new: list[int] = []
    for _ in range(max_new_tokens):
        x = torch.tensor([ids + new])
        nxt = int(vlm(x, prefix=prefix).logits[0, -1].argmax())
        if nxt in stops:
            break
        new.append(nxt)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def ocr_answers(samples: list[VisualSample], rows: list[Row], read: Any) -> list[dict[str, Any]]:
    """The OCR path on word questions: ``read(image)`` (``ocr_summary``) -> summary, exact when it equals the word.

    Returns:
        ``{"image", "question", "answer", "ocr", "exact", "prompt"}`` per word row; ``prompt`` is the text prompt
        the OCR path hands the LM ("Text in the image: ...").
    """
    cache: dict[int, str] = {}
    out = []
    for i, question, answer, kind in rows:
        if kind != "word":
            continue
        if i not in cache:
            cache[i] = normalize_text(read(samples[i].image).summary)
        out.append(
            {
                "image": i,
                "question": question,
                "answer": answer,
                "ocr": cache[i],
                "exact": cache[i] == normalize_text(answer),
                "prompt": ocr_prompt(cache[i], question),
            }
        )
    return out


def ocr_prompt(ocr_text: str, question: str) -> str:
    """The text prompt of the OCR path: what OCR read, then the question."""
    return f"Text in the image: {ocr_text}\n{question}"


def text_only_baselines(results: Mapping[str, Mapping[str, float]], methods: Sequence[str]) -> dict[str, str]:
    """Each fusion method's text-only rival: the better (on ``em_all``) of the zero-shot model and the method's own
    blind twin (same trainable parameters, no image)."""
    what = "text_only_baselines"
    return {
        m: max(
            ("text_only_zero_shot", f"text_only_blind_{m}"),
            key=lambda k: need(need(results, k, what), "em_all", what),
        )
        for m in methods
    }
