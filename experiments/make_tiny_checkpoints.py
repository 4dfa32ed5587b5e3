"""Write tiny random LLaVA-family checkpoints of two families, each with its own processor, to try
``[models]`` (experiments/own_models.toml) without downloading anything.

    python experiments/make_tiny_checkpoints.py data/checkpoints

writes ``clip-llama-teacher``, ``clip-llama-small`` (CLIP vision tower, Llama decoder, a Metaspace BPE
tokenizer, CLIP image processor, 16 visual tokens with the CLS dropped) and ``siglip-qwen2`` (SigLIP tower,
Qwen2 decoder, a byte-level BPE tokenizer, SigLIP image processor, 4 visual tokens), each a
``LlavaForConditionalGeneration`` saved with a ``LlavaProcessor`` (tokenizer trained here with
``tokenizers``, image processor, chat template). The weights are random: the checkpoints exercise the
pipeline, they do not answer well.
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


def train_tokenizer(kind: str, vocab_size: int):
    """A BPE tokenizer trained on ``corpus()``: ``metaspace`` (Llama-style) or ``bytelevel`` (Qwen2-style)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>" if kind == "metaspace" else None))
    if kind == "metaspace":
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        alphabet = list(string.ascii_letters + string.digits + string.punctuation + "\n")
    else:
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=alphabet)
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})


def build(family: str, out: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """One checkpoint of ``family`` (``clip-llama`` or ``siglip-qwen2``) with its processor, at ``out``."""
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

    torch.manual_seed(seed)
    if family == "clip-llama":
        tok = train_tokenizer("metaspace", 400)
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=32, patch_size=8, projection_dim=32)
        text_cls, strategy, layer, extra = LlamaConfig, "default", -2, 1
        images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    elif family == "siglip-qwen2":
        tok = train_tokenizer("bytelevel", 500)
        vision = SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=32, patch_size=16, vision_use_head=False)
        text_cls, strategy, layer, extra = Qwen2Config, "full", -1, 0
        images = SiglipImageProcessor(size={"height": 32, "width": 32})
    else:
        raise ValueError(f"unknown family {family!r}; choose clip-llama or siglip-qwen2")
    ids = tok.convert_tokens_to_ids
    text = text_cls(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    pad_token_id=ids("<pad>"), bos_token_id=ids("<s>"), eos_token_id=ids("</s>"))
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=ids("<image>"),
                      vision_feature_select_strategy=strategy, vision_feature_layer=layer,
                      image_seq_length=(32 // vision.patch_size) ** 2, pad_token_id=ids("<pad>"))
    model = LlavaForConditionalGeneration(cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    LlavaProcessor(image_processor=images, tokenizer=tok, chat_template=TEMPLATE, patch_size=vision.patch_size,
                   vision_feature_select_strategy=strategy, num_additional_image_tokens=extra,
                   image_token="<image>").save_pretrained(out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder to write the checkpoints into")
    args = ap.parse_args(argv)
    for name, family, hidden, layers in (("clip-llama-teacher", "clip-llama", 96, 3),
                                         ("clip-llama-small", "clip-llama", 64, 2),
                                         ("siglip-qwen2", "siglip-qwen2", 64, 2)):
        print(build(family, args.out / name, hidden, layers))


if __name__ == "__main__":
    main()
