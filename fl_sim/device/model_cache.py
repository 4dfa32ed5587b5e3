"""Per-process caches shared by the server and the emulated devices: base models with adapters, data.

A Ray worker emulates many devices in turn; it loads each tier's base model once and swaps adapter
state per device, and loads each domain's split once.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from fl_sim.models import placement
from fl_sim.models.adapters import AdapterConfig, adapter_state, add_adapters
from fl_sim.models.mllm import Prompter, load_mllm
from fl_sim.models.prompts import has_own_processor
from fl_sim.world.catalog import NO_DOMAINS, DomainCatalog
from fl_sim.world.data import load_split, partition_rows
from fl_sim.world.scenes import CELL_PX, IMAGE_SHAPE  # noqa: F401 - the fleet's images, used through this module
from fl_sim.world.tokenizer import load_tokenizer


def adapted_model(model_path: str, lora_r: int = 8, tokens: bool = False, projector: str = "full"):
    """``(model, initial_adapter_state)``: the base MLLM at ``model_path`` with LoRA adapters (and trainable
    word embeddings with ``tokens``), one copy per process and device (``fl_sim.models.placement``). The initial
    state (LoRA B = 0, projector = base, token deltas = 0, on the CPU) makes the model equal to its base."""
    return _adapted_model(model_path, lora_r, tokens, projector, str(placement.current()))


@lru_cache(maxsize=8)
def _adapted_model(model_path: str, lora_r: int, tokens: bool, projector: str, device: str):
    ids = None  # the shared word tokenizer's words; a checkpoint's own tokenizer names its own
    if tokens and has_own_processor(model_path):
        vocab = _base_model(model_path, device).config.text_config.vocab_size
        ids = _prompter_for(model_path, device).trainable_token_ids(vocab)
    torch.manual_seed(0)  # the same initial LoRA A in every process
    model = add_adapters(load_mllm(model_path), AdapterConfig(r=lora_r, alpha=2 * lora_r, tokens=tokens,
                                                                projector=projector), ids)
    model.eval()
    initial = adapter_state(model)
    return model.to(device), initial


def base_model(model_path: str):
    """The base MLLM at ``model_path``, once per process and device."""
    return _base_model(model_path, str(placement.current()))


@lru_cache(maxsize=8)
def _base_model(model_path: str, device: str):
    return load_mllm(model_path).to(device)


def labelling_model(model_path: str, int8: bool = False):
    """The base MLLM at ``model_path`` for labelling; with ``int8`` on the CPU, a copy whose linear layers
    are int8 dynamically quantised (``torch.ao.quantization.quantize_dynamic``), made once per process."""
    if not int8 or placement.current().type != "cpu":
        return base_model(model_path)
    return _int8_model(model_path)


@lru_cache(maxsize=2)
def _int8_model(model_path: str):
    import warnings

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated for torchao, which is not a dependency
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(load_mllm(model_path), {torch.nn.Linear}, dtype=torch.qint8)


def prompter(cache_dir: str | None, catalog: DomainCatalog = NO_DOMAINS) -> Prompter:
    """The shared tokenizer's prompter (its vocabulary covers ``catalog``'s words: the run's user domains)."""
    return _prompter(cache_dir, catalog)


@lru_cache(maxsize=4)
def _prompter(cache_dir: str | None, catalog: DomainCatalog) -> Prompter:
    return Prompter(load_tokenizer(cache_dir, catalog=catalog))


def prompter_for(model_path: str, cache_dir: str | None, catalog: DomainCatalog = NO_DOMAINS) -> Prompter:
    """How the model at ``model_path`` reads text and images: its own processor when its directory has one
    (``fl_sim.models.prompts``; the zoo's directories carry one too), the shared word tokenizer's prompter
    otherwise."""
    if not has_own_processor(model_path):
        return prompter(cache_dir, catalog)
    return _prompter_for(model_path, str(placement.current()))


@lru_cache(maxsize=8)
def _prompter_for(model_path: str, device: str) -> Prompter:
    from transformers import AutoConfig

    from fl_sim import FlSimError, one_line
    from fl_sim.models.families import family_of
    from fl_sim.models.mllm import visual_tokens
    from fl_sim.models.prompts import CheckpointPrompter

    # the processor first, from the config alone: what is wrong with it is said before the weights load
    pr = CheckpointPrompter(model_path, AutoConfig.from_pretrained(model_path, local_files_only=True), IMAGE_SHAPE)
    model = _base_model(model_path, device)
    fam = family_of(model)
    try:  # the tower's tokens of one image, the embeddings they make, and where each token sits in the image
        vis = visual_tokens(model, pr.pixels(np.zeros((1, *IMAGE_SHAPE), np.uint8)))
        with torch.no_grad():
            made = fam.image_embeds(model, placement.to_model(fam.connector_module(model), vis)).shape[1]
        fam.token_boxes(model, vis.shape[1]), fam.token_groups(model, vis.shape[1])
    except FlSimError:
        raise
    except Exception as exc:  # noqa: BLE001 - a processor and model that do not fit together: the checkpoint's
        raise FlSimError(f"{model_path}: its processor's images do not fit its model ({one_line(exc)})") from None
    if made != pr.n_image:
        raise FlSimError(f"{model_path}: its processor lays out {pr.n_image} image tokens for a {IMAGE_SHAPE[0]}x"
                         f"{IMAGE_SHAPE[1]} image, its model makes {made} (the processor's image size, patch size or "
                         "token count does not match the model's)")
    pr.n_visual = vis.shape[1]
    return pr


@lru_cache(maxsize=8)
def tower_hash(model_path: str) -> str:
    """SHA-256 (16 hex digits) of the model's vision tower weights and feature selection: equal hashes, the
    same visual tokens."""
    import hashlib

    from fl_sim.models.families import family_of

    model = base_model(model_path)
    cfg, fam = model.config, family_of(model)
    h = hashlib.sha256(f"{cfg.model_type}|{getattr(cfg, 'vision_feature_layer', None)}|"
                       f"{getattr(cfg, 'vision_feature_select_strategy', None)}".encode())
    for name, t in sorted(fam.tower_module(model).state_dict().items()):
        h.update(name.encode() + b"\0" + t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def same_view(a: str, b: str, cache_dir: str | None, catalog: DomainCatalog = NO_DOMAINS) -> bool:
    """Whether models ``a`` and ``b`` see a sample identically: the same vision tower weights and the same
    prompter (token ids, visual token count). Then one's visual tokens and token ids serve the other."""
    vocab = {base_model(p).config.text_config.vocab_size for p in (a, b)}
    return (tower_hash(a) == tower_hash(b) and len(vocab) == 1
            and prompter_for(a, cache_dir, catalog).identity == prompter_for(b, cache_dir, catalog).identity)




@lru_cache(maxsize=32)
def split(domain: str, which: str, n: int, seed: int, cache_dir: str | None, catalog: DomainCatalog = NO_DOMAINS):
    """``fl_sim.world.data.load_split`` of the fleet's images, once per process."""
    return load_split(domain, which, n, seed, CELL_PX, cache_dir, catalog)


@lru_cache(maxsize=32)
def device_pools(domain: str, n: int, seed: int, cache_dir: str | None, num_devices: int, kind: str, by: str,
                 alpha: float, catalog: DomainCatalog = NO_DOMAINS) -> tuple[np.ndarray, ...]:
    """Indices of ``domain``'s train split held by each device (a flwr-datasets partition).

    Cached on disk (``data/pools-*``: one int64 array of rows and one of offsets, numpy ``.npy``) keyed by
    everything that determines it, so each Ray worker loads in milliseconds what a 1,000-device
    partition takes seconds to compute.
    """
    from importlib.metadata import version

    from fl_sim.cache import cache_root, get_or_build, stable_hash
    from fl_sim.world.data import GENERATOR_VERSION

    key = stable_hash({"v": GENERATOR_VERSION, "domain": domain, "n": n, "seed": seed, "devices": num_devices,
                       "kind": kind, "by": by, "alpha": alpha,
                       "flwr_datasets": version("flwr-datasets")}  # a new partitioner may partition differently
                      | ({"data": catalog.data_key(domain)} if domain in catalog else {}))  # a dataset's content
    folder = cache_root(cache_dir) / "data" / f"pools-{domain}-{key}"

    def build(tmp):
        ds = split(domain, "train", n, seed, cache_dir, catalog)
        ds = ds.add_column("row", np.arange(len(ds)))
        if by in ds.column_names:  # only the rows travel: 3x faster for 1,000 devices (the images stay behind)
            ds = ds.select_columns([by, "row"])
        parts = [p.astype(np.int64) for p in partition_rows(ds, num_devices, "row", by=by, alpha=alpha, seed=seed,
                                                            kind=kind)]
        np.save(tmp / "rows.npy", np.concatenate(parts) if parts else np.zeros(0, np.int64))
        np.save(tmp / "offsets.npy", np.cumsum([0] + [len(p) for p in parts]).astype(np.int64))
        return {"domain": domain, "devices": num_devices}

    get_or_build(folder, build, f"device partition of {domain}")
    rows = np.load(folder / "rows.npy", allow_pickle=False)
    off = np.load(folder / "offsets.npy", allow_pickle=False)
    return tuple(rows[off[i]:off[i + 1]] for i in range(num_devices))


@lru_cache(maxsize=8)
def reference_token(model_path: str, cache_dir: str | None) -> torch.Tensor:
    """``(D_vision,)`` mean visual token of the shared front-end over 256 fixed source images.

    Device and cloud compute the same vector (the front-end is shared and frozen): the device scores
    token novelty against it, the cloud fills tokens that were not uploaded with it.
    """
    from fl_sim.models.mllm import visual_tokens

    ds = split("source", "train", 256, 0, cache_dir)
    with torch.no_grad():
        vis = visual_tokens(base_model(model_path), prompter_for(model_path, cache_dir).pixels(np.asarray(ds["image"])))
    return vis.mean((0, 1))


for _public, _cached in ((adapted_model, _adapted_model), (base_model, _base_model), (prompter, _prompter),
                        (prompter_for, _prompter_for)):
    _public.cache_clear, _public.cache_info = _cached.cache_clear, _cached.cache_info
