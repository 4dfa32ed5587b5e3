"""A checkpoint's own way of reading: its tokenizer, image processor and chat template (``AutoProcessor``).

A checkpoint directory that carries its own processor is read with it (the zoo's directories carry one
that reproduces ``mllm.Prompter``: ``word_processor``). The question goes through the chat template as one
user turn holding an image and the text, the template's single image token is expanded to as many visual
tokens as the model's vision tower makes (found by running it once, so any tower, patch size or feature
strategy works), and images go through the image processor (resized and normalised as the tower expects).

Layout of one training sequence::

    chat_template(user: <image> question, generation prompt) with <image> x N, then answer tokens <eos>
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from fl_sim import FlSimError
from fl_sim.models.mllm import Prompter

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "preprocessor_config.json", "processor_config.json")
FALLBACK_TEMPLATE = "USER: {image} {question} ASSISTANT:"  # LLaVA-1.5's format, when a checkpoint has no template
MAX_TEXT_POSITIONS = 96  # question, answer and template positions kept beside the visual tokens


def has_own_processor(path: str | Path) -> bool:
    """Whether the checkpoint directory carries its own tokenizer (and so its own processor)."""
    return any((Path(path) / f).is_file() for f in TOKENIZER_FILES)


def image_token_id(config) -> int:
    tid = getattr(config, "image_token_id", None)
    return int(tid if tid is not None else config.image_token_index)


class CheckpointPrompter(Prompter):
    """``Prompter`` with a checkpoint's own processor: same methods, the model's own token ids and pixels."""

    def __init__(self, path: str | Path, config, n_image_tokens: int):
        from transformers import AutoProcessor

        path = Path(path)
        if not any((path / f).is_file() for f in ("preprocessor_config.json", "processor_config.json")):
            raise FlSimError(f"{path}: a tokenizer but no image processor (preprocessor_config.json or "
                             "processor_config.json); save the model's processor (AutoProcessor) beside it")
        try:
            proc = AutoProcessor.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any loading failure is the checkpoint's, named in one line
            raise FlSimError(f"{path}: its processor does not load ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        tok = getattr(proc, "tokenizer", None)
        self.image_processor = getattr(proc, "image_processor", None)
        if tok is None or self.image_processor is None:
            raise FlSimError(f"{path}: its processor has no tokenizer and image processor "
                             f"({type(proc).__name__}); save a LlavaProcessor (or AutoProcessor) with both")
        self.processor, self.tok, self.n_image = proc, tok, n_image_tokens
        self.image = image_token_id(config)
        if self.image >= len(tok) or tok.convert_ids_to_tokens(self.image) is None:
            raise FlSimError(f"{path}: the model's image token id {self.image} is not in its tokenizer "
                             f"({len(tok)} tokens)")
        if len(tok) > config.text_config.vocab_size:
            raise FlSimError(f"{path}: its tokenizer has {len(tok)} tokens, more than the model's vocabulary "
                             f"({config.text_config.vocab_size})")
        if tok.eos_token_id is None:
            raise FlSimError(f"{path}: its tokenizer has no end-of-sequence token (eos_token)")
        self.eos = int(tok.eos_token_id)
        self.pad = int(tok.pad_token_id) if tok.pad_token_id is not None else self.eos
        self.bos = tok.bos_token_id
        self.sep = None
        self._head, self._tail = self._template(path)
        self.max_len = min(int(config.text_config.max_position_embeddings), n_image_tokens + MAX_TEXT_POSITIONS)
        h = hashlib.sha256()
        for f in PROCESSOR_FILES:
            if (path / f).is_file():
                h.update(f.encode() + b"\0" + (path / f).read_bytes())
        self.identity = f"{h.hexdigest()[:16]}-{n_image_tokens}"

    def _template(self, path: Path) -> tuple[list[int], list[int]]:
        """Token ids before and after the question in one rendered user turn (the image token expanded)."""
        marker = "\u2063QUESTION\u2063"
        template = getattr(self.processor, "chat_template", None) or getattr(self.tok, "chat_template", None)
        image_text = self.tok.convert_ids_to_tokens(self.image)
        if isinstance(template, dict):  # several named templates: the default one
            template = template.get("default") or next(iter(template.values()), None)
        if template:
            turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": marker}]}]
            try:
                text = self.processor.apply_chat_template(turn, chat_template=template, add_generation_prompt=True,
                                                          tokenize=False)
            except Exception as exc:  # noqa: BLE001 - a template that does not render is the checkpoint's
                raise FlSimError(f"{path}: its chat template does not render a user turn with an image "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        else:
            text = FALLBACK_TEMPLATE.format(image=image_text, question=marker)
        if text.count(marker) != 1:
            raise FlSimError(f"{path}: its chat template does not render the question text once")
        before, after = text.split(marker)
        head, tail = self.words(before), self.words(after)
        if self.bos is not None and head[:1] != [self.bos]:  # what the processor adds when the template does not
            head = [self.bos] + head
        if (head + tail).count(self.image) != 1:
            raise FlSimError(f"{path}: its chat template renders {(head + tail).count(self.image)} image tokens "
                             f"({image_text!r}) for one image, expected 1")
        expand = [self.image] * self.n_image

        def expanded(ids):
            return [t for i in ids for t in (expand if i == self.image else [i])]

        return expanded(head), expanded(tail)

    def prompt(self, question: str) -> list[int]:
        return self._head + self.words(question.strip()) + self._tail

    def pixels(self, images) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` -> the image processor's ``pixel_values`` (float32)."""
        images = np.asarray(images)
        if not len(images):  # the processor's output shape, for no images
            return self.pixels(np.zeros((1, 8, 8, 3), np.uint8))[:0]
        return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"].float()

    def trainable_token_ids(self, vocab: int) -> list[int]:
        special = set(self.tok.all_special_ids) | {self.image}
        return [i for i in range(min(vocab, len(self.tok))) if i not in special]
