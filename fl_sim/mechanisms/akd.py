"""AKD, adapter-based knowledge distillation in the cloud (no Flower here).

The teacher answers every uploaded sample once (``teacher_targets``): its greedy answer is the
pseudo-label, and its logits and last hidden states on ``prompt + pseudo-label`` are kept with the sample,
so a sample distilled for several tiers over several rounds costs one teacher pass. A cloud copy of a
device tier then trains its adapters (LoRA + projector) only, with

    w_ce   * CE(student, pseudo-label)                                  (answer tokens)
  + w_kl   * T^2 KL(softmax(teacher/T) || softmax(student/T))          (answer tokens)
  + w_feat * MSE(align(student hidden), teacher hidden)                 (every non-pad position)

where ``align`` is a learned linear map from the student's width to the teacher's (trained with the
adapters, kept in the cloud). A zero weight switches a term off. ``fl_sim.mechanisms.replay`` keeps a bounded,
uniform (reservoir) sample of past uploads so that training on new domains does not erase old ones.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fl_sim import FlSimError
from fl_sim.config import AKDConfig
from fl_sim.models import placement
from fl_sim.models.adapters import adapter_parameters
from fl_sim.models.families import base
from fl_sim.models.mllm import Prompter, answer_stats, greedy, with_tokens
from fl_sim.models.train import per_sample_loss
from fl_sim.world.domains import questions_from_captions

TARGET_KEYS = ("vis", "input_ids", "attention_mask", "labels", "t_logits", "t_hidden", "t_conf", "distil")
# A student that reads text differently from the teacher (its own tokenizer or visual token count) has no
# position-by-position match with it: no logit KL, and features are distilled pooled over the sequence.
POOLED_KEYS = ("vis", "input_ids", "attention_mask", "labels", "t_pooled", "t_conf", "distil")


def _pad(t: torch.Tensor, length: int, value) -> torch.Tensor:
    return F.pad(t, (0, length - t.shape[1]), value=value)


def fits(prompter: Prompter, question: str, answer: str) -> bool:
    """Whether ``question`` and ``answer`` (and ``<eos>``) fit the positions of ``prompter``'s model."""
    return len(prompter.prompt(question)) + len(prompter.words(answer)) + 1 <= prompter.max_len


def _padded_batch(prompter: Prompter, questions, answers) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids, attention_mask, labels`` padded to ``prompter.max_len`` (so batches of any round stack)."""
    b, L = prompter.train_batch(questions, answers), prompter.max_len
    if b["input_ids"].shape[1] > L:  # F.pad would crop silently, cutting labels and image positions
        raise FlSimError(f"a question and answer take {b['input_ids'].shape[1]} positions, more than {L}")
    return _pad(b["input_ids"], L, prompter.pad), _pad(b["attention_mask"], L, 0), _pad(b["labels"], L, -100)


@torch.no_grad()
def teacher_targets(teacher, prompter: Prompter, vis: torch.Tensor, questions: list[str],
                    max_new_tokens: int = 28, batch_size: int = 128,
                    states: str = "generation") -> dict[str, torch.Tensor]:
    """Pseudo-labels, logits, hidden states and answer confidence of the teacher for ``(vis, questions)``.

    Sequences are padded to ``prompter.max_len`` so targets of different rounds stack into one buffer;
    logits and hidden states are stored in fp16, at the positions the losses read (logits predicting answer
    tokens, hidden states at every non-pad position; zeros elsewhere). With ``states = "generation"`` they
    come from the generation itself (``greedy(hidden=True)``), and a row whose answer does not read back to
    the generated ids (no ``<eos>`` within ``max_new_tokens``, or text that tokenizes differently) is run
    through the teacher once more; ``"forward"`` runs every row through it once more
    (``AKDConfig.teacher_states``).
    """
    if states not in ("generation", "forward"):
        raise FlSimError(f"teacher states {states!r}: 'generation' or 'forward'")
    groups = list(greedy(teacher, prompter, vis, questions, max_new_tokens, hidden=states == "generation"))
    pseudo, stats = answer_stats(prompter, len(questions), groups)
    ids, mask, labels = _padded_batch(prompter, questions, pseudo)
    L, ends, text = prompter.max_len, mask.sum(1), base(teacher).config.get_text_config()
    logits = torch.zeros(len(questions), L, text.vocab_size, dtype=torch.float16)
    hidden = torch.zeros(len(questions), L, text.hidden_size, dtype=torch.float16)
    again = []
    for g in groups:
        for j, i in enumerate(g.rows):
            p, m = g.prompt_len, int(ends[i])
            if g.hidden is None or m - p > g.tokens.shape[1] or not torch.equal(g.tokens[j, :m - p], ids[i, p:m]):
                again.append(i)
                continue
            logits[i, p - 1:m - 1] = g.logits[j, :m - p].half()
            hidden[i, :m] = g.hidden[j, :m].half()
    again.sort()  # batches of consecutive rows, as a second pass over every row takes them
    for s in range(0, len(again), batch_size):
        rows = again[s:s + batch_size]
        n = int(ends[rows].max())
        with placement.autocast():
            out = teacher(**with_tokens(teacher, ids[rows, :n], vis[rows]),
                          attention_mask=placement.to_model(teacher, mask[rows, :n]), output_hidden_states=True)
        logits[rows, :n] = out.logits.half().cpu()
        hidden[rows, :n] = out.hidden_states[-1].half().cpu()
    return {"vis": vis.float(), "input_ids": ids, "attention_mask": mask, "labels": labels,
            "t_logits": logits, "t_hidden": hidden,
            "t_conf": torch.as_tensor(stats["confidence"], dtype=torch.float32),
            "distil": torch.ones(len(questions))}


def question_targets(teacher, prompter: Prompter, vis: torch.Tensor, captions: list[str], k: int,
                     rng: np.random.Generator, exclude: list[str] | None = None,
                     max_new_tokens: int = 28, states: str = "generation") -> dict[str, torch.Tensor]:
    """Teacher targets for up to ``k`` more questions about each image ``vis[i]``, generated from a caption
    of it (``questions_from_captions``; ``exclude[i]``, the question it came with, is not asked again).
    The teacher answers them from the image; ``{}`` when no caption parses."""
    asked = questions_from_captions(captions, k, rng, exclude)
    if not asked:
        return {}
    return teacher_targets(teacher, prompter, vis[[i for i, _ in asked]], [q for _, q in asked], max_new_tokens,
                           states=states)


def pseudo_labels(targets: dict[str, torch.Tensor], prompter: Prompter) -> list[str]:
    """The teacher's answers (text) inside ``targets``, read back from their labels."""
    return [prompter.decode(row[row != -100]) for row in targets["labels"]]


def pooled_hidden(targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(n, D_teacher)`` fp16: the teacher's last hidden states averaged over each sequence's positions."""
    m = targets["attention_mask"].unsqueeze(-1).float()
    return ((targets["t_hidden"].float() * m).sum(1) / m.sum(1).clamp_min(1)).half()


def student_targets(prompter: Prompter, vis: torch.Tensor, questions: list[str], teacher: dict[str, torch.Tensor],
                    answers: list[str]) -> dict[str, torch.Tensor]:
    """The teacher's targets ``teacher`` (one row per question) for a student that reads text with its own
    ``prompter`` and sees the images as ``vis`` (its own tower's tokens): CE on the pseudo-labels
    ``answers`` in its own token ids, feature distillation on the pooled teacher features (``POOLED_KEYS``)."""
    ids, mask, labels = _padded_batch(prompter, questions, answers)
    return {"vis": vis.float(), "input_ids": ids, "attention_mask": mask, "labels": labels,
            "t_pooled": pooled_hidden(teacher), "t_conf": teacher["t_conf"].clone(),
            "distil": teacher["distil"].clone()}


def anchor_targets(prompter: Prompter, vis: torch.Tensor, questions: list[str], answers: list[str],
                   vocab: int, teacher_width: int, pooled: bool = False) -> dict[str, torch.Tensor]:
    """Targets for the cloud's own labelled source data (true answers, CE only: ``distil`` = 0).

    The cloud pretrained the device models on this data; mixing it into AKD batches (``AKDConfig.anchor``)
    keeps the source domain from being overwritten by teacher labels where the teacher is no better.
    ``pooled``: in the keys of a student that reads text its own way (``POOLED_KEYS``).
    """
    ids, mask, labels = _padded_batch(prompter, questions, answers)
    L, n = prompter.max_len, len(questions)
    if pooled:
        return {"vis": vis.float(), "input_ids": ids, "attention_mask": mask, "labels": labels,
                "t_pooled": torch.zeros(n, teacher_width, dtype=torch.float16), "t_conf": torch.ones(n),
                "distil": torch.zeros(n)}
    return {"vis": vis.float(), "input_ids": ids, "attention_mask": mask, "labels": labels,
            "t_logits": torch.zeros(n, L, vocab, dtype=torch.float16),
            "t_hidden": torch.zeros(n, L, teacher_width, dtype=torch.float16),
            "t_conf": torch.ones(n), "distil": torch.zeros(n)}


def akd_loss(student, align: torch.nn.Module | None, batch: dict[str, torch.Tensor], cfg: AKDConfig) -> dict:
    """The weighted AKD loss on a batch of targets (on the CPU; moved to the student), and each term
    (floats) for logging."""
    n = int(batch["attention_mask"].sum(1).max())
    batch = {k: placement.to_model(student, v) for k, v in batch.items()}
    ids, mask, labels = batch["input_ids"][:, :n], batch["attention_mask"][:, :n], batch["labels"][:, :n]
    with placement.autocast():
        out = student(**with_tokens(student, ids, batch["vis"]), attention_mask=mask,
                      output_hidden_states=cfg.w_feat > 0)
    terms = {}
    w = batch["distil"].float() if "distil" in batch else torch.ones(len(ids), device=ids.device)  # KL/feature weight
    if cfg.w_ce > 0:
        terms["ce"] = per_sample_loss(out.logits, labels).mean()
    if cfg.w_kl > 0 and "t_logits" in batch:
        ans = labels[:, 1:] != -100  # positions that predict an answer token
        T = cfg.temperature
        s = out.logits[:, :-1][ans].float() / T
        t = batch["t_logits"][:, :n][:, :-1][ans].float() / T
        kl = F.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="none").sum(-1)
        wk = w[:, None].expand_as(ans)[ans]
        terms["kl"] = (kl * wk).sum() / wk.sum().clamp_min(1e-8) * T * T
    if cfg.w_feat > 0 and "t_hidden" in batch:
        keep = mask.bool()
        h = align(out.hidden_states[-1][keep].float())
        mse = (h - batch["t_hidden"][:, :n][keep].float()).pow(2).mean(-1)
        wf = w[:, None].expand_as(keep)[keep]
        terms["feat"] = (mse * wf).sum() / wf.sum().clamp_min(1e-8)
    elif cfg.w_feat > 0 and "t_pooled" in batch:
        m = mask.unsqueeze(-1).float()
        h = align((out.hidden_states[-1].float() * m).sum(1) / m.sum(1).clamp_min(1))
        mse = (h - batch["t_pooled"].float()).pow(2).mean(-1)
        terms["feat"] = (mse * w).sum() / w.sum().clamp_min(1e-8)
    weights = {"ce": cfg.w_ce, "kl": cfg.w_kl, "feat": cfg.w_feat}
    total = sum(weights[k] * v for k, v in terms.items())
    return {"loss": total, **{k: float(v.detach()) for k, v in terms.items()}}


def train_adapters(student, align: torch.nn.Module | None, draw, cfg: AKDConfig, seed: int,
                   masks: dict[str, torch.Tensor] | None = None, steps: int | None = None) -> dict:
    """``steps`` (default ``cfg.steps``) AdamW steps on the student's trainable (adapter) parameters and
    ``align``.

    ``draw(step)`` returns a batch of targets. ``masks`` (``adapter_state`` key -> bool tensor, one per
    adapter tensor) restricts training to the ``True`` entries: the others get zero gradients, so a fresh
    AdamW (no weight decay) leaves them exactly unchanged. Returns mean loss terms.
    """
    torch.manual_seed(seed)
    params = [p for p in student.parameters() if p.requires_grad]
    gated = []
    if masks is not None:
        named = adapter_parameters(student)
        if set(masks) != set(named) or any(masks[k].shape != named[k].shape for k in named):
            raise ValueError(f"training masks do not match the adapter tensors ({len(masks)} vs {len(named)})")
        if len(named) != len(params):
            raise ValueError("some trainable parameters are not adapter tensors, so masks cannot cover them")
        gated = [(named[k], masks[k].to(named[k].device, named[k].dtype)) for k in named]
    if align is not None and cfg.w_feat > 0:
        params += list(align.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    student.train()
    logs: dict[str, list[float]] = {}
    for step in range(cfg.steps if steps is None else steps):
        out = akd_loss(student, align, draw(step), cfg)
        opt.zero_grad()
        out["loss"].backward()
        for p, m in gated:
            if p.grad is not None:
                p.grad.mul_(m)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for k, v in out.items():
            logs.setdefault(k, []).append(float(v.detach() if torch.is_tensor(v) else v))
    student.eval()
    return {k: float(np.mean(v)) for k, v in logs.items()}


def confident(targets: dict[str, torch.Tensor], min_confidence: float) -> dict[str, torch.Tensor]:
    """The targets whose teacher answer confidence is at least ``min_confidence`` (a label-noise filter)."""
    if not size(targets):
        return targets
    return take(targets, torch.nonzero(targets["t_conf"] >= min_confidence).flatten().numpy())


def take(targets: dict[str, torch.Tensor], idx) -> dict[str, torch.Tensor]:
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    return {k: v[idx] for k, v in targets.items()}


def concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    parts = [p for p in parts if p and len(p["input_ids"])]
    if not parts:
        return {}
    keys = tuple(parts[0])
    if any(set(p) != set(keys) for p in parts):
        raise ValueError(f"targets with different keys: {sorted(keys)} vs {sorted(set().union(*parts))}")
    return {k: torch.cat([p[k] for p in parts]) for k in keys}


def size(targets: dict) -> int:
    return len(targets["input_ids"]) if targets else 0
