"""Write tiny random vision-language checkpoints, each with its own family's processor, to try ``[models]``
(experiments/own_models.toml) without downloading anything.

    python experiments/make_tiny_checkpoints.py data/checkpoints

writes, from the LLaVA families, ``clip-llama-teacher``, ``clip-llama-small`` (CLIP vision tower, Llama decoder, a
Metaspace BPE tokenizer, CLIP image processor, 16 visual tokens with the CLS dropped) and ``siglip-qwen2`` (SigLIP
tower, Qwen2 decoder, a byte-level BPE tokenizer, SigLIP image processor, 4 visual tokens), each a
``LlavaForConditionalGeneration`` saved with a ``LlavaProcessor``; and one checkpoint of each other family, named
after it (a 48x48 image gives the visual tokens in brackets):

* ``idefics3``: SmolVLM-style ``Idefics3ForConditionalGeneration`` + ``Idefics3Processor``, image splitting on
  (2x2 sub-images of 16x16 and a global view, pixel shuffle to 4 tokens each: 20 ``<image>``);
* ``qwen2-vl``: ``Qwen2VLForConditionalGeneration`` + ``Qwen2VLProcessor``, dynamic resolution, 2x2 merge,
  M-RoPE (a 6x6 patch grid: 9 ``<|image_pad|>``);
* ``gemma3``: ``Gemma3ForConditionalGeneration`` + ``Gemma3Processor``, SigLIP pooled to 4 ``<image_soft_token>``;
* ``paligemma``: ``PaliGemmaForConditionalGeneration`` + ``PaliGemmaProcessor`` (16 ``<image>``, prefix-LM);
* ``llava-onevision``: ``LlavaOnevisionForConditionalGeneration`` + ``LlavaOnevisionProcessor``, anyres tiles and
  ``image_newline`` (a base tile and 2x2 tiles: 24 ``<image>``).

Every tokenizer is trained here with ``tokenizers`` on a tiny corpus, with the family's special tokens and a chat
template in its style; every decoder is tiny (hidden 64, 2 layers, ``max_position_embeddings`` 256). The Qwen2-VL
and LLaVA-OneVision processors hold a video processor, which transformers builds only with torchvision: without it
their processor files are written all the same, but ``AutoProcessor`` loads them only where torchvision is
installed. The weights are random: the checkpoints exercise the pipeline, they do not answer well.
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import torch

TEMPLATE = ("{% for m in messages %}{{ bos_token }}{{ m['role'] | upper }}: {% for c in m['content'] %}"
            "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n"
            "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]


def corpus() -> list[str]:
    """Text the tokenizers learn their merges from: the built-in world's words and a few sentences."""
    from fl_sim.world.domains import corpus_words

    words = corpus_words()
    return [" ".join(words), "how many shapes are there? is there a red circle? what colour is the square?",
            "describe the image. yes no one two three four", "USER: ASSISTANT:"] * 4


def train_tokenizer(kind: str, vocab_size: int, specials: list[str] | None = None, extra_text: tuple[str, ...] = (),
                    **named):
    """A BPE tokenizer trained on ``corpus()`` (plus ``extra_text``): ``metaspace`` (Llama-style), ``gemma`` (the
    same without a "▁" prepended to the text) or ``bytelevel`` (Qwen2/SmolLM-style). ``specials`` are the special
    tokens the vocabulary starts with (in that order); ``named`` overrides the named ones (``pad_token``,
    ``bos_token``, ``eos_token``, ``unk_token``, ``extra_special_tokens``), which default to the LLaVA families'
    ``<pad> <s> </s> <unk>`` and ``<image>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS if specials is None else specials
    unk = named.get("unk_token", "<unk>")
    tok = Tokenizer(models.BPE(unk_token=unk if kind != "bytelevel" else None))
    if kind in ("metaspace", "gemma"):  # gemma: no "▁" prepended to each piece between special tokens
        scheme = "never" if kind == "gemma" else "always"
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=scheme)
        tok.decoder = decoders.Metaspace(prepend_scheme=scheme)
        alphabet = list(string.ascii_letters + string.digits + string.punctuation + "\n")
    else:
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet)
    tok.train_from_iterator(corpus() + list(extra_text) * 4, trainer)
    kwargs = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "extra_special_tokens": {"image_token": "<image>"}, **named}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def _text_kwargs(tok, hidden: int, layers: int, **extra) -> dict:
    """The tiny decoder's sizes and special ids shared by every family (4 heads of 16, 2 KV heads)."""
    ids = tok.convert_tokens_to_ids
    return {"vocab_size": len(tok), "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 256, "pad_token_id": ids(tok.pad_token), "bos_token_id": ids(tok.bos_token),
            "eos_token_id": ids(tok.eos_token), **extra}


def _llava(family: str, hidden: int, layers: int):
    """``clip-llama`` / ``siglip-qwen2``: a ``LlavaForConditionalGeneration`` and its ``LlavaProcessor``."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    if family == "clip-llama":
        tok = train_tokenizer("metaspace", 400)
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=32, patch_size=8, projection_dim=32)
        text_cls, strategy, layer, extra = LlamaConfig, "default", -2, 1
        images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        tok = train_tokenizer("bytelevel", 500)
        vision = SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=32, patch_size=16, vision_use_head=False)
        text_cls, strategy, layer, extra = Qwen2Config, "full", -1, 0
        images = SiglipImageProcessor(size={"height": 32, "width": 32})
    ids = tok.convert_tokens_to_ids
    text = text_cls(**_text_kwargs(tok, hidden, layers))
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=ids("<image>"),
                      vision_feature_select_strategy=strategy, vision_feature_layer=layer,
                      image_seq_length=(32 // vision.patch_size) ** 2, pad_token_id=ids("<pad>"))
    proc = LlavaProcessor(image_processor=images, tokenizer=tok, chat_template=TEMPLATE, patch_size=vision.patch_size,
                          vision_feature_select_strategy=strategy, num_additional_image_tokens=extra,
                          image_token="<image>")
    return LlavaForConditionalGeneration(cfg), proc


class _UnbuiltProcessor:
    """Stands in for a processor with a video processor where torchvision is missing: transformers' video processors
    need it, so neither the processor nor ``AutoProcessor.from_pretrained`` works here, but ``save_pretrained``
    writes the files the real one would (tokenizer, chat template, ``processor_config.json`` with the image and
    video processor configs), which load wherever torchvision is installed."""

    def __init__(self, cls, video: dict, image_processor, tokenizer, chat_template: str, **kwargs):
        self.cls, self.video, self.image_processor, self.tokenizer = cls, video, image_processor, tokenizer
        self.chat_template, self.kwargs = chat_template, kwargs

    def save_pretrained(self, out: Path) -> None:
        import json

        self.tokenizer._set_processor_class(self.cls.__name__)
        self.tokenizer.save_pretrained(out)
        (out / "chat_template.jinja").write_text(self.chat_template)
        config = {"image_processor": self.image_processor.to_dict(), "video_processor": self.video, **self.kwargs,
                  "processor_class": self.cls.__name__}
        (out / "processor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _with_video(cls, video: dict, **parts):
    """``cls(video_processor=<video>, **parts)`` where ``video`` is a video processor's config (with its
    ``video_processor_type``), or an ``_UnbuiltProcessor`` that saves the same where torchvision is missing."""
    import warnings

    import transformers
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        kwargs = {k: v for k, v in video.items() if k != "video_processor_type"}
        return cls(video_processor=getattr(transformers, video["video_processor_type"])(**kwargs), **parts)
    warnings.warn(f"torchvision is missing: {cls.__name__} (its video processor needs torchvision) is written as "
                  "files only; AutoProcessor loads it where torchvision is installed", stacklevel=3)
    return _UnbuiltProcessor(cls, video, **parts)


IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}"
    "{% if m['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% elif c['type'] == 'image' %}<image>"
    "{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")


def _idefics3(hidden: int, layers: int):
    """SmolVLM-style ``Idefics3ForConditionalGeneration``: a 16x16, 4-pixel-patch SigLIP-like tower, pixel shuffle
    (scale 2) to 4 tokens per sub-image, a Llama decoder; the image processor resizes the longest edge to 32 and
    splits it into 16x16 tiles plus a global 16x16 view (a 48x48 image: 2x2 tiles + global = 20 ``<image>``)."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    grid = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tok = train_tokenizer("bytelevel", 600, ["<pad>", "<unk>", "<|im_start|>", "<end_of_utterance>",
                                             "<fake_token_around_image>", "<image>", "<global-img>", *grid],
                          extra_text=("User: Assistant:",), pad_token="<pad>", bos_token="<|im_start|>",
                          eos_token="<end_of_utterance>", unk_token="<unk>",
                          extra_special_tokens={"image_token": "<image>"})
    tile, patch, scale = 16, 4, 2
    vision = Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=tile, patch_size=patch)
    cfg = Idefics3Config(vision_config=vision, text_config=LlamaConfig(**_text_kwargs(tok, hidden, layers)),
                         image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale,
                         pad_token_id=tok.pad_token_id)
    images = Idefics3ImageProcessor(do_image_splitting=True, size={"longest_edge": 2 * tile},
                                    max_image_size={"longest_edge": tile})
    proc = Idefics3Processor(image_processor=images, tokenizer=tok, chat_template=IDEFICS3_TEMPLATE,
                             image_seq_len=(tile // patch) ** 2 // scale**2)
    return Idefics3ForConditionalGeneration(cfg), proc


QWEN2VL_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _qwen2_vl(hidden: int, layers: int):
    """``Qwen2VLForConditionalGeneration``: 8-pixel patches (temporal patch 2), 2x2 merge, M-RoPE sections [2, 3, 3]
    of the 16-wide heads; the image processor keeps 48x48 at 48x48 (grid 1x6x6: 36 patches, 9 ``<|image_pad|>``)."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLTextConfig,
        Qwen2VLVisionConfig,
    )

    tok = train_tokenizer("bytelevel", 500, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                             "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
                          extra_text=("system user assistant You are a helpful assistant.",),
                          pad_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|im_end|>",
                          unk_token=None,
                          extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    ids = tok.convert_tokens_to_ids
    patch, merge = 8, 2
    vision = Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=hidden, mlp_ratio=2, num_heads=2,
                                 patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2)
    head_dim = hidden // 4
    section = [head_dim // 8, 3 * head_dim // 16, head_dim // 2 - head_dim // 8 - 3 * head_dim // 16]
    text = Qwen2VLTextConfig(**_text_kwargs(tok, hidden, layers, rope_parameters={
        "rope_type": "default", "rope_theta": 1e6, "mrope_section": section}))
    cfg = Qwen2VLConfig(vision_config=vision, text_config=text, image_token_id=ids("<|image_pad|>"),
                        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                        vision_end_token_id=ids("<|vision_end|>"))
    f = patch * merge
    sizes = {"size": {"shortest_edge": 2 * f * 2 * f, "longest_edge": 4 * f * 4 * f}, "patch_size": patch,
             "temporal_patch_size": 2, "merge_size": merge}
    video = {"video_processor_type": "Qwen2VLVideoProcessor", "cap_pixels_per_frame": True, **sizes}
    proc = _with_video(Qwen2VLProcessor, video,
                       image_processor=Qwen2VLImageProcessor(**sizes), tokenizer=tok, chat_template=QWEN2VL_TEMPLATE)
    return Qwen2VLForConditionalGeneration(cfg), proc


GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{% if m['content'] is string %}{{ m['content'] | trim }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image>{% elif c['type'] == 'text' %}"
    "{{ c['text'] | trim }}{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def _gemma3(hidden: int, layers: int):
    """``Gemma3ForConditionalGeneration``: a 32x32, 8-pixel-patch SigLIP tower (16 patches) average-pooled to
    ``mm_tokens_per_image`` 4, a Gemma3 decoder (sliding then full attention); each image becomes
    ``\\n\\n<start_of_image>`` + 4 ``<image_soft_token>`` + ``<end_of_image>\\n\\n``."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    tok = train_tokenizer("gemma", 500, ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
                                         "<start_of_image>", "<end_of_image>", "<image_soft_token>"],
                          extra_text=("user model",), pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                          unk_token="<unk>",
                          extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                                "image_token": "<image_soft_token>"})
    ids = tok.convert_tokens_to_ids
    tokens = 4
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=8, vision_use_head=False)
    text = Gemma3TextConfig(**_text_kwargs(
        tok, hidden, layers, head_dim=hidden // 4, query_pre_attn_scalar=hidden // 4, sliding_window=64,
        layer_types=["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)],
        eos_token_id=[ids("<eos>"), ids("<end_of_turn>")]))
    cfg = Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=tokens,
                       boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
                       image_token_index=ids("<image_soft_token>"))
    images = Gemma3ImageProcessor(size={"height": 32, "width": 32})
    proc = Gemma3Processor(image_processor=images, tokenizer=tok, chat_template=GEMMA3_TEMPLATE,
                           image_seq_length=tokens)
    model = Gemma3ForConditionalGeneration(cfg)
    # transformers starts the projection at zeros, where the image would change nothing: random instead
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=cfg.initializer_range)
    return model, proc


PALIGEMMA_TEMPLATE = (
    "{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% endfor %}")


def _paligemma(hidden: int, layers: int):
    """``PaliGemmaForConditionalGeneration``: a 32x32, 8-pixel-patch SigLIP tower (16 ``<image>`` tokens), a linear
    projector, a Gemma decoder with a bidirectional prefix. The processor puts the image tokens first, then
    ``<bos>`` and the prompt and ``\\n``; it adds the 1152 ``<locXXXX>``/``<segXXX>`` tokens to the tokenizer."""
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    tok = train_tokenizer("gemma", 500, ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], pad_token="<pad>",
                          bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                          extra_special_tokens={"image_token": "<image>"})
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=8, vision_use_head=False)
    images = SiglipImageProcessor(size={"height": 32, "width": 32})
    images.image_seq_length = (vision.image_size // vision.patch_size) ** 2
    proc = PaliGemmaProcessor(image_processor=images, tokenizer=tok, chat_template=PALIGEMMA_TEMPLATE)
    text = GemmaConfig(**_text_kwargs(tok, hidden, layers, head_dim=hidden // 4))  # after the processor's tokens
    cfg = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=proc.image_token_id,
                          vocab_size=len(tok), projection_dim=hidden, hidden_size=hidden)
    return PaliGemmaForConditionalGeneration(cfg), proc


ONEVISION_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'video' %}"
    "<video>\n{% endif %}{% endfor %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}")


def _llava_onevision(hidden: int, layers: int):
    """``LlavaOnevisionForConditionalGeneration``: a 16x16, 8-pixel-patch SigLIP tower (4 tokens a tile), a 2-layer
    projector, a Qwen2 decoder; anyres tiles on the grid pinpoints 16/32 plus ``image_newline``. A 48x48 image: base
    tile + 2x2 tiles = 5 tiles of 16x16, and 4 + 4x4 + 4 newlines = 24 ``<image>`` tokens."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tok = train_tokenizer("bytelevel", 500, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
                          extra_text=("user assistant",), pad_token="<|endoftext|>", bos_token="<|endoftext|>",
                          eos_token="<|im_end|>", unk_token=None,
                          extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})
    ids = tok.convert_tokens_to_ids
    tile, patch = 16, 8
    pinpoints = [[tile, tile], [tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=tile, patch_size=patch, vision_use_head=False)
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=Qwen2Config(**_text_kwargs(tok, hidden, layers)),
                               image_token_index=ids("<image>"), video_token_index=ids("<video>"),
                               vision_feature_select_strategy="full", vision_feature_layer=-1,
                               image_grid_pinpoints=pinpoints, vision_aspect_ratio="anyres_max_9")
    images = LlavaOnevisionImageProcessor(size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints)
    video = {"video_processor_type": "LlavaOnevisionVideoProcessor", "size": {"height": tile, "width": tile}}
    proc = _with_video(LlavaOnevisionProcessor, video, image_processor=images, tokenizer=tok,
                       num_image_tokens=(tile // patch) ** 2, vision_feature_select_strategy="full",
                       chat_template=ONEVISION_TEMPLATE, image_token="<image>", video_token="<video>",
                       vision_aspect_ratio="anyres_max_9")
    return LlavaOnevisionForConditionalGeneration(cfg), proc


FAMILIES = {"clip-llama": None, "siglip-qwen2": None, "idefics3": _idefics3, "qwen2-vl": _qwen2_vl,
            "gemma3": _gemma3, "paligemma": _paligemma, "llava-onevision": _llava_onevision}


def build(family: str, out: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """One random checkpoint of ``family`` (a key of ``FAMILIES``) with its own processor, saved at ``out``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    torch.manual_seed(seed)
    model, proc = _llava(family, hidden, layers) if FAMILIES[family] is None else FAMILIES[family](hidden, layers)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    proc.save_pretrained(out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder to write the checkpoints into")
    args = ap.parse_args(argv)
    for name, family, hidden, layers in (("clip-llama-teacher", "clip-llama", 96, 3),
                                         ("clip-llama-small", "clip-llama", 64, 2),
                                         ("siglip-qwen2", "siglip-qwen2", 64, 2),
                                         *((f, f, 64, 2) for f in FAMILIES if f not in ("clip-llama", "siglip-qwen2"))):
        print(build(family, args.out / name, hidden, layers))


if __name__ == "__main__":
    main()
