"""Build Imp-style MLLMs with transformers, and turn questions/images into their inputs.

Layout of one sequence (question before the image, which small models learn far more easily)::

    <bos> question words <image> x N <sep> answer words <eos>

N is the number of visual tokens (one per grid cell). Training loss is on the answer only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, PhiConfig, SiglipVisionConfig, SiglipVisionModel

from fl_sim import FlSimError, one_line
from fl_sim.models import placement
from fl_sim.models.families import base, family_of
from fl_sim.models.presets import FrontendPreset, ModelPreset
from fl_sim.world.scenes import GRID
from fl_sim.world.tokenizer import BOS, BUILT_IN_VOCAB, EOS, IMAGE, PAD, SEP

MAX_POSITIONS = 64


def vision_config(fe: FrontendPreset, cell_px: int) -> SiglipVisionConfig:
    return SiglipVisionConfig(hidden_size=fe.hidden, intermediate_size=4 * fe.hidden, num_hidden_layers=fe.layers,
                              num_attention_heads=fe.heads, image_size=GRID * cell_px, patch_size=cell_px,
                              num_channels=3, vision_use_head=False)


def build_frontend(fe: FrontendPreset, cell_px: int) -> SiglipVisionModel:
    return SiglipVisionModel(vision_config(fe, cell_px))


def tower_tokens(tower: SiglipVisionModel, images) -> torch.Tensor:
    """The tower's last hidden states for uint8 ``images`` ``(B, H, W, 3)``: ``(B, cells, hidden)``."""
    return tower(pixel_values=Prompter.pixels(images), output_hidden_states=True).hidden_states[-1]


def build_mllm(preset: ModelPreset, fe: FrontendPreset, cell_px: int, tokenizer) -> LlavaForConditionalGeneration:
    """A fresh ``LlavaForConditionalGeneration`` (SigLIP + GELU-MLP projector + Phi decoder).

    Its initial weights do not depend on a run's own words: the model is drawn for the built-in vocabulary
    and the user's word embeddings are added after every other draw, so a model trained on the built-in
    world starts where the default zoo's does, whatever data the run brings."""
    ids = tokenizer.convert_tokens_to_ids
    text = PhiConfig(vocab_size=min(len(tokenizer), BUILT_IN_VOCAB), hidden_size=preset.hidden,
                     intermediate_size=4 * preset.hidden,
                     num_hidden_layers=preset.layers, num_attention_heads=preset.heads,
                     max_position_embeddings=MAX_POSITIONS, pad_token_id=ids(PAD), bos_token_id=ids(BOS),
                     eos_token_id=ids(EOS), resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
                     tie_word_embeddings=True)
    cfg = LlavaConfig(vision_config=vision_config(fe, cell_px), text_config=text, image_token_index=ids(IMAGE),
                      vision_feature_select_strategy="full", vision_feature_layer=-1,
                      image_seq_length=GRID * GRID, projector_hidden_act="gelu",
                      pad_token_id=ids(PAD), bos_token_id=ids(BOS), eos_token_id=ids(EOS), tie_word_embeddings=True)
    model = LlavaForConditionalGeneration(cfg)
    if len(tokenizer) > BUILT_IN_VOCAB:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    # Tied input/output word embeddings: captions then align word embeddings with visual features,
    # which is what lets small LMs learn conjunctions ("is there a red circle?"); untied, a 2-layer LM
    # stayed at chance on existence questions for 600 steps (measured).
    if model.lm_head.weight is not model.model.language_model.embed_tokens.weight:
        raise RuntimeError("word embeddings are not tied")
    return model


def load_mllm(path: str | Path, tokenizer=None) -> LlavaForConditionalGeneration:
    """Load a local Hugging Face vision-language checkpoint (never from a hub) with transformers' generic
    entry point; with ``tokenizer``, check it fits that tokenizer."""
    from transformers import AutoModelForImageTextToText

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FlSimError(f"no Hugging Face checkpoint (config.json) at {path}")
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated or mismatched weights: the checkpoint's, in one line
        raise FlSimError(f"{path}: its weights do not load ({one_line(exc)})") from None
    if tokenizer is not None and model.config.text_config.vocab_size != len(tokenizer):
        raise FlSimError(f"checkpoint {path} has vocab size {model.config.text_config.vocab_size}, "
                         f"the shared tokenizer has {len(tokenizer)}")
    family_of(model).loaded(model)
    from fl_sim.models import lowbit

    lowbit.apply(model)  # a tier derived with backend = "torchao": real int8 weights
    return model.eval()


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Prompter:
    """Turns (images, questions, answers) into model inputs with the shared tokenizer."""

    max_len = MAX_POSITIONS  # positions a padded training sequence takes (AKD targets of all rounds stack)

    def __init__(self, tokenizer, n_image_tokens: int = GRID * GRID):
        self.tok = tokenizer
        self.n_image = n_image_tokens  # image tokens in a prompt
        self.n_visual = n_image_tokens  # visual tokens (the tower's) per image
        c = tokenizer.convert_tokens_to_ids
        self.pad, self.bos, self.eos, self.image, self.sep = c(PAD), c(BOS), c(EOS), c(IMAGE), c(SEP)
        self.identity = f"fl-sim-words-{len(tokenizer)}"  # equal identities: the same token ids for the same text

    def trainable_token_ids(self, vocab: int) -> list[int]:
        """The word ids whose embeddings adapters may train (every id but the special tokens)."""
        from fl_sim.world.tokenizer import SPECIALS

        return list(range(len(SPECIALS), vocab))

    def words(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def prompt(self, question: str) -> list[int]:
        return [self.bos] + self.words(question) + [self.image] * self.n_image + [self.sep]

    @staticmethod
    def pixels(images) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` -> float ``(B, 3, H, W)`` in [-1, 1]."""
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
        return (x.permute(0, 3, 1, 2) / 127.5) - 1.0

    def train_batch(self, questions, answers) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and answer-only ``labels`` (-100 elsewhere)."""
        seqs, labels = [], []
        for q, a in zip(questions, answers):
            p, t = self.prompt(str(q)), self.words(str(a)) + [self.eos]
            seqs.append(p + t)
            labels.append([-100] * len(p) + t)
        n = max(map(len, seqs))
        ids = torch.full((len(seqs), n), self.pad)
        lab = torch.full((len(seqs), n), -100)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, (s, t) in enumerate(zip(seqs, labels)):
            ids[i, :len(s)], lab[i, :len(t)], mask[i, :len(s)] = torch.tensor(s), torch.tensor(t), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": lab}

    def decode(self, ids) -> str:
        out = []
        for t in ids.tolist():
            if t in (self.eos, self.pad):
                break
            out.append(t)
        return self.tok.decode(out, skip_special_tokens=True).strip()


def with_pixels(model, input_ids: torch.Tensor, pixels: torch.Tensor) -> dict:
    """``model(**...)`` keyword arguments for token ``input_ids`` and images ``pixels`` (the prompter's, batch
    first), with the extra inputs the model's family reads (``fl_sim.models.families``)."""
    fam = family_of(model)
    return {"input_ids": input_ids, **fam.pixel_inputs(model, pixels), **fam.text_inputs(model, input_ids)}


@torch.no_grad()
def answer(model, prompter: Prompter, images, questions, max_new_tokens: int = 6, batch_size: int = 256) -> list[str]:
    """Greedy answers. Prompts are grouped by length, so no padding (and no position shift) is needed."""
    model.eval()
    prompts = [prompter.prompt(str(q)) for q in questions]
    out: list[str] = [""] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    images = np.asarray(images)
    for idx in by_len.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            ids, pixels = placement.to_model(model, torch.tensor([prompts[i] for i in chunk]),
                                             prompter.pixels(images[chunk]))
            with placement.autocast():
                gen = model.generate(**with_pixels(model, ids, pixels), attention_mask=torch.ones_like(ids),
                                     max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=prompter.eos,
                                     pad_token_id=prompter.pad)
            for i, row in zip(chunk, gen[:, ids.shape[1]:]):
                out[i] = prompter.decode(row)
    return out


# ---------------------------------------------------------------- visual tokens as a common currency
@torch.no_grad()
def visual_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """``(B, N, D_vision)`` fp32 visual tokens of the model's frozen vision tower (on the CPU): what its
    connector consumes (``fl_sim.models.families``: LLaVA's ``vision_feature_layer``, Qwen2-VL's patches
    before the merger, ...)."""
    fam = family_of(model)
    with placement.autocast():
        out = fam.tower_tokens(model, placement.to_model(fam.tower_module(model), pixel_values))
    return out.float().cpu()


def with_tokens(model, input_ids: torch.Tensor, vis: torch.Tensor) -> dict:
    """``model(**...)`` keyword arguments that run ``model`` on ``input_ids`` with its images given as visual
    tokens ``vis`` (``visual_tokens``), so the cloud runs a model on uploaded (possibly partial) visual tokens
    instead of images. From ``visual_tokens(pixels)`` they give what the model gives from the pixels."""
    input_ids, vis = placement.to_model(base(model), input_ids, vis)
    return family_of(model).inputs(model, input_ids, vis)


@dataclass
class Greedy:
    """One batch of greedy generation from prompts of one length (``prompt_len``)."""

    rows: list[int]  # which prompts (indices into the caller's list)
    prompt_len: int
    tokens: torch.Tensor  # (b, S) generated ids, on the CPU; ``pad`` after a row's ``<eos>``
    logits: torch.Tensor  # (b, S, V) fp32: step j's logits, which predict ``tokens[:, j]``
    hidden: torch.Tensor | None  # (b, prompt_len + S, D) last-layer hidden states of prompt + tokens


@torch.no_grad()
def greedy(model, prompter: Prompter, vis: torch.Tensor, questions, max_new_tokens: int, batch_size: int = 256,
           hidden: bool = False) -> Iterator[Greedy]:
    """Greedy generation from visual tokens, batched by prompt length (no padding, no position shift).

    ``hidden``: also the last layer's hidden states at every prompt and generated position, taken from the
    generation itself (the prefill, each decode step, and one more cached step that feeds the last tokens),
    so a caller that needs the model's states on ``prompt + answer`` runs no second forward pass.
    """
    model.eval()
    prompts = [prompter.prompt(str(q)) for q in questions]
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for p_len, idx in by_len.items():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            ids = placement.to_model(model, torch.tensor([prompts[i] for i in chunk]))
            with placement.autocast():
                gen = model.generate(**with_tokens(model, ids, vis[chunk]), attention_mask=torch.ones_like(ids),
                                     max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=prompter.eos,
                                     pad_token_id=prompter.pad, output_logits=True, return_dict_in_generate=True,
                                     output_hidden_states=hidden)
            logits = torch.stack(gen.logits, 1).float()
            tokens = gen.sequences[:, -logits.shape[1]:]
            states = _generated_states(model, gen, tokens, p_len) if hidden else None
            yield Greedy(chunk, p_len, tokens.cpu(), logits.cpu(), states)


def _generated_states(model, gen, tokens: torch.Tensor, p_len: int) -> torch.Tensor | None:
    """``(b, p_len + S, D)`` last-layer hidden states of ``prompt + tokens`` from a finished ``generate``
    (``None`` when it kept no cache to feed its last tokens through)."""
    if gen.past_key_values is None:
        return None
    b, S = tokens.shape
    with placement.autocast():
        last = model(input_ids=tokens[:, -1:], past_key_values=gen.past_key_values,
                     attention_mask=torch.ones(b, p_len + S, dtype=torch.long, device=tokens.device),
                     output_hidden_states=True, use_cache=False,
                     **family_of(model).step_inputs(model, p_len + S - 1, tokens[:, -1:])).hidden_states[-1]
    steps = [h[-1] for h in gen.hidden_states]  # step 0: the prompt's positions; step j: token j-1's
    return torch.cat([*steps, last], 1).float().cpu()


def answer_with_stats(model, prompter: Prompter, vis: torch.Tensor, questions, max_new_tokens: int = 6,
                      batch_size: int = 256) -> tuple[list[str], dict[str, np.ndarray]]:
    """Greedy answers from visual tokens, with per-sample uncertainty statistics of the generated answer
    (``answer_stats``)."""
    return answer_stats(prompter, len(questions), greedy(model, prompter, vis, questions, max_new_tokens, batch_size))


def answer_stats(prompter: Prompter, n: int, groups) -> tuple[list[str], dict[str, np.ndarray]]:
    """The ``n`` answers (text) of greedy ``groups`` and the uncertainty of each.

    ``confidence``: product over generated tokens (up to and including ``<eos>``) of the max probability
    (the CD-CCA score); ``token_confidence``: its geometric mean per token (the product's length bias
    removed: a 12-word caption is otherwise always "less sure" than a one-word answer); ``entropy``: mean
    token entropy; ``margin``: mean gap between the top two probabilities.
    """
    out: list[str] = [""] * n
    stats = {k: np.zeros(n) for k in ("confidence", "token_confidence", "entropy", "margin")}
    for g in groups:
        probs, seq = g.logits.softmax(-1), g.tokens
        top2 = probs.topk(2, dim=-1).values
        ent = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
        for j, i in enumerate(g.rows):
            out[i] = prompter.decode(seq[j])
            ends = (seq[j] == prompter.eos).nonzero()
            L = int(ends[0]) + 1 if len(ends) else seq.shape[1]
            stats["confidence"][i] = float(top2[j, :L, 0].prod())
            stats["token_confidence"][i] = float(top2[j, :L, 0].clamp_min(1e-30).log().mean().exp())
            stats["entropy"][i] = float(ent[j, :L].mean())
            stats["margin"][i] = float((top2[j, :L, 0] - top2[j, :L, 1]).mean())
    return out, stats
