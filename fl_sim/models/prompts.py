"""A checkpoint's own way of reading: its tokenizer, image processor and chat template (``AutoProcessor``).

A checkpoint directory that carries its own processor is read with it (the zoo's directories carry one
that reproduces ``mllm.Prompter``: ``word_processor``). The question goes through the chat template as one
user turn holding an image and the text; the part of the turn that holds the image goes through the
processor itself with one blank image of the fleet's size, so the image is laid out as the family lays it
out (LLaVA's repeated ``<image>``, SmolVLM's sub-image markers, Qwen2-VL's vision start and end, Gemma's
start and end of image), and images go through the image processor (resized and normalised as the tower
expects). ``fl_sim.device.model_cache`` checks that the model makes one embedding per image token.

Layout of one training sequence::

    chat_template(user: <image> question, generation prompt), the image expanded, then answer tokens <eos>
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from fl_sim import FlSimError, one_line
from fl_sim.models.mllm import Prompter
from fl_sim.models.processor_files import IMAGE_PROCESSOR_FILES, has_own_processor  # noqa: F401 - re-exported

PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "preprocessor_config.json", "processor_config.json")
FALLBACK_TEMPLATE = "USER: {image} {question} ASSISTANT:"  # LLaVA-1.5's format, when a checkpoint has no template
MAX_TEXT_POSITIONS = 96  # question, answer and template positions kept beside the visual tokens


def load_processor(path: Path):
    """The checkpoint's ``AutoProcessor``; when it cannot be built because its video processor needs
    torchvision (Qwen2-VL, LLaVA-OneVision: fl-sim installs no torchvision and reads only images), the same
    processor class without its video part, built from the checkpoint's tokenizer, image processor, chat
    template and settings."""
    import importlib.util
    import json

    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(path, local_files_only=True)
    except Exception:
        config = path / "processor_config.json"
        if importlib.util.find_spec("torchvision") is not None or not config.is_file():
            raise
        settings = json.loads(config.read_text())
        if "video_processor" not in settings:
            raise
        cls = getattr(transformers, str(settings.pop("processor_class", "")), None)
        if cls is None:
            raise

        class ImagesOnly(cls):
            @classmethod
            def get_attributes(klass):
                return [a for a in super().get_attributes() if a != "video_processor"]

        template = path / "chat_template.jinja"
        settings = {k: v for k, v in settings.items() if not isinstance(v, dict)}  # the parts' own settings
        return ImagesOnly(image_processor=AutoImageProcessor.from_pretrained(path, local_files_only=True),
                   tokenizer=AutoTokenizer.from_pretrained(path, local_files_only=True),
                   chat_template=template.read_text() if template.is_file() else None, **settings)


def image_token_id(config) -> int:
    tid = getattr(config, "image_token_id", None)
    return int(tid if tid is not None else config.image_token_index)


class CheckpointPrompter(Prompter):
    """``Prompter`` with a checkpoint's own processor: same methods, the model's own token ids and pixels."""

    def __init__(self, path: str | Path, config, image_shape: tuple[int, int, int]):
        """``image_shape``: the fleet's images (one blank image of it lays out the image tokens)."""
        from fl_sim.models.families import FAMILIES

        path = Path(path)
        if not any((path / f).is_file() for f in IMAGE_PROCESSOR_FILES):
            raise FlSimError(f"{path}: a tokenizer but no image processor (preprocessor_config.json or "
                             "processor_config.json); save the model's processor (AutoProcessor) beside it")
        try:
            proc = load_processor(path)
        except Exception as exc:  # noqa: BLE001 - any loading failure is the checkpoint's, named in one line
            raise FlSimError(f"{path}: its processor does not load ({one_line(exc)})") from None
        tok = getattr(proc, "tokenizer", None)
        self.image_processor = getattr(proc, "image_processor", None)
        if tok is None or self.image_processor is None:
            raise FlSimError(f"{path}: its processor has no tokenizer and image processor "
                             f"({type(proc).__name__}); save a LlavaProcessor (or AutoProcessor) with both")
        self.processor, self.tok, self.family = proc, tok, FAMILIES[config.model_type]
        self.n_visual = 0  # visual tokens per image (the tower's), set by the caller that runs the tower
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
        self._head, self._tail = self._template(path, np.zeros((1, *image_shape), np.uint8))
        self.n_image = (self._head + self._tail).count(self.image)
        self.max_len = min(int(config.text_config.max_position_embeddings), self.n_image + MAX_TEXT_POSITIONS)
        h = hashlib.sha256()
        for f in PROCESSOR_FILES:
            if (path / f).is_file():
                h.update(f.encode() + b"\0" + (path / f).read_bytes())
        self.identity = f"{h.hexdigest()[:16]}-{self.n_image}"

    def _render(self, path: Path, template, image: bool, marker: str) -> str:
        content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": marker}]
        turn = [{"role": "user", "content": content}]
        try:
            return self.processor.apply_chat_template(turn, chat_template=template, add_generation_prompt=True,
                                                      tokenize=False)
        except Exception as exc:  # noqa: BLE001 - a template that does not render is the checkpoint's
            raise FlSimError(f"{path}: its chat template does not render a user turn with an image "
                             f"({one_line(exc)})") from None

    def _template(self, path: Path, blank: np.ndarray) -> tuple[list[int], list[int]]:
        """Token ids before and after the question in one rendered user turn, the image laid out by the
        processor (its part of the turn goes through the processor with the ``blank`` image)."""
        marker = "\u2063QUESTION\u2063"
        template = getattr(self.processor, "chat_template", None) or getattr(self.tok, "chat_template", None)
        if isinstance(template, dict):  # several named templates: the default one
            template = template.get("default") or next(iter(template.values()), None)
        if template:
            text = self._render(path, template, True, marker)
            try:  # the same turn without the image: the part that changes holds it
                plain = self._render(path, template, False, marker)
            except FlSimError:  # a template that needs the image: the part that holds its placeholder
                signs = [s for s in (getattr(self.processor, a, None) for a in ("image_token", "boi_token")) if s]
                plain = marker.join(p if not any(s in p for s in signs) else "" for p in text.split(marker))
        else:
            image_text = self.tok.convert_ids_to_tokens(self.image)
            text, plain = (FALLBACK_TEMPLATE.format(image=image_text if image else "", question=marker)
                           for image in (True, False))
        if text.count(marker) != 1:
            raise FlSimError(f"{path}: its chat template does not render the question text once")
        parts = text.split(marker)
        with_image = [i for i, (a, b) in enumerate(zip(parts, plain.split(marker))) if a != b]
        if len(with_image) != 1:
            raise FlSimError(f"{path}: its chat template renders no image in a user turn with an image")
        ids = []
        for i, part in enumerate(parts):
            if i == with_image[0]:
                try:
                    out = self.processor(text=[part], images=[blank[0]], add_special_tokens=False)
                except Exception as exc:  # noqa: BLE001 - a processor that cannot lay out an image is the checkpoint's
                    raise FlSimError(f"{path}: its processor does not lay out one image in a prompt "
                                     f"({one_line(exc)})") from None
                ids.append([int(t) for t in np.asarray(out["input_ids"]).reshape(-1)])
            else:
                ids.append(self.words(part))
        head, tail = ids
        if self.bos is not None and head[:1] != [self.bos]:  # what the processor adds when the template does not
            head = [self.bos] + head
        if self.image not in head + tail:
            raise FlSimError(f"{path}: its processor lays out an image without the model's image token "
                             f"({self.tok.convert_ids_to_tokens(self.image)!r})")
        return head, tail

    def prompt(self, question: str) -> list[int]:
        return self._head + self.words(question.strip()) + self._tail

    def pixels(self, images) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` -> the image processor's ``pixel_values`` (float32)."""
        images = np.asarray(images)
        if not len(images):  # the processor's output shape, for no images
            return self.pixels(np.zeros((1, 8, 8, 3), np.uint8))[:0]
        out = self.image_processor(images=list(images), return_tensors="pt")
        return self.family.batch_pixels(out["pixel_values"], len(images)).float()

    def trainable_token_ids(self, vocab: int) -> list[int]:
        special = set(self.tok.all_special_ids) | {self.image}
        return [i for i in range(min(vocab, len(self.tok))) if i not in special]
