import numpy as np
import pytest

from fl_sim import FlSimError
from fl_sim.world.data import generate, load_split, partition
from fl_sim.world.domains import (
    DOMAINS,
    FAMILIES,
    VQA_FAMILIES,
    ask,
    get_domain,
    parse_caption,
    questions_from_captions,
)
from fl_sim.world.scenes import digit_pool


def test_generator_is_deterministic_per_seed():
    a = generate("novel", "train", 20, seed=3, cell_px=8)
    b = generate("novel", "train", 20, seed=3, cell_px=8)
    c = generate("novel", "train", 20, seed=4, cell_px=8)
    for x, y in zip(a, b):
        assert np.array_equal(x["image"], y["image"]) and x["question"] == y["question"] and x["answer"] == y["answer"]
    assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))


def test_sample_i_does_not_depend_on_n():
    a = generate("dusk", "test", 5, seed=0, cell_px=8)
    b = generate("dusk", "test", 12, seed=0, cell_px=8)
    assert all(x["question"] == y["question"] and np.array_equal(x["image"], y["image"]) for x, y in zip(a, b))


def test_domains_cover_every_family_and_differ():
    for name in DOMAINS:
        samples = generate(name, "train", 200, seed=0, cell_px=8)
        assert {s["family"] for s in samples} == set(FAMILIES)
        assert all(s["image"].shape == (24, 24, 3) and s["image"].dtype == np.uint8 for s in samples)
    src = np.mean([s["image"].mean() for s in generate("source", "test", 50, 0, 8)])
    dusk = np.mean([s["image"].mean() for s in generate("dusk", "test", 50, 0, 8)])
    assert dusk < 0.7 * src  # low light
    novel_words = " ".join(s["caption"] for s in generate("novel", "test", 50, 0, 8))
    assert not any(w in novel_words.split() for w in ("circle", "square", "triangle"))


def test_digit_writers_are_disjoint_between_splits():
    tr, te = digit_pool("train"), digit_pool("test")
    for c in range(10):
        assert len(tr[c]) and len(te[c]) and not set(tr[c]) & set(te[c])


def test_answers_are_consistent_with_captions():
    for s in generate("source", "test", 200, 0, 8):
        objs = [o.split() for o in s["caption"].split(" and ")]
        if s["family"] == "count":
            shape = s["question"].split()[2]
            n = sum(o[2] == shape for o in objs)
            assert s["answer"] == ["zero", "one", "two", "three", "four"][n]
        if s["family"] == "exist":
            _, _, _, colour, shape, _ = s["question"].split()
            assert (s["answer"] == "yes") == any(o[1] == colour and o[2] == shape for o in objs)


def test_captions_parse_back_and_give_questions_of_distinct_families():
    samples = [s for d in DOMAINS for s in generate(d, "train", 30, 1, 8)]
    for s in samples:
        objs = parse_caption(s["caption"])
        assert objs is not None
        assert " and ".join(f"{o.size} {o.colour} {o.shape} {o.position}" for o in objs) == s["caption"]
    for bad in ("", "large red circle", "large red circle top and small blue square top", "huge red circle top",
                "large red circle top and", "large red circle nowhere"):
        assert parse_caption(bad) is None, bad
    caps = [s["caption"] for s in samples] + ["not a caption"]
    asked = [s["question"] for s in samples] + ["?"]
    got = questions_from_captions(caps, 3, np.random.default_rng(0), exclude=asked)
    assert got == questions_from_captions(caps, 3, np.random.default_rng(0), exclude=asked)  # seeded
    per_image = {}
    for i, q in got:
        per_image.setdefault(i, []).append(q)
    assert len(samples) not in per_image and len(per_image) > 0.9 * len(samples)
    families = {"is": "exist", "how": "count", "what colour": "colour", "what shape": "shape", "where": "position"}
    for i, qs in per_image.items():
        fams = [next(f for p, f in families.items() if q.startswith(p)) for q in qs]
        assert len(qs) <= 3 and len(set(fams)) == len(fams) and set(fams) <= set(VQA_FAMILIES)
        assert asked[i] not in qs
        objs = parse_caption(caps[i])  # every question but "is there ...? no" is about an object of the caption
        for q in qs:
            if q.startswith(("what colour", "where")):
                assert any(f" {o.shape} " in q for o in objs)
    # a caption may name more objects than a scene holds (a teacher's mistake): no count without a word for it
    five = " and ".join(f"small red circle {p}" for p in ("top left", "top", "top right", "left", "center"))
    qs = [q for _, q in questions_from_captions([five] * 20, 5, np.random.default_rng(0))]
    assert qs and not any(q.startswith("how many circle") for q in qs)
    # with all five families, every answerable family is asked
    objs = parse_caption("small red circle top and large blue square center")
    full = questions_from_captions(["small red circle top and large blue square center"], 5, np.random.default_rng(1))
    dom = get_domain("source")
    assert len(full) == sum(ask(objs, dom, f, np.random.default_rng(0)) is not None for f in VQA_FAMILIES)


def test_unknown_domain_is_one_line_error():
    with pytest.raises(FlSimError, match="unknown domain 'moon'; allowed: source, dusk, novel, digits"):
        get_domain("moon")
    with pytest.raises(FlSimError, match="unknown split"):
        generate("source", "val", 1, 0, 8)


def test_dataset_cache_hit_and_corruption(cache_dir):
    from pathlib import Path

    ds = load_split("source", "test", 30, seed=0, cell_px=8, cache_dir=cache_dir)
    assert len(ds) == 30 and ds[0]["image"].shape == (24, 24, 3)
    folder = next(Path(cache_dir, "data").glob("source-test-*"))
    stamp = (folder / "MANIFEST.json").stat().st_mtime_ns
    again = load_split("source", "test", 30, seed=0, cell_px=8, cache_dir=cache_dir)
    assert (folder / "MANIFEST.json").stat().st_mtime_ns == stamp  # hit: not rebuilt
    arrow = next(folder.glob("*.arrow"))
    cut = arrow.with_suffix(".cut")  # a corrupt entry: a truncated copy put in place (a new file, as every
    cut.write_bytes(arrow.read_bytes()[:100])  # cache write is: the splits loaded above map the old one)
    cut.replace(arrow)
    rebuilt = load_split("source", "test", 30, seed=0, cell_px=8, cache_dir=cache_dir)
    assert [r for r in rebuilt["question"]] == [r for r in again["question"]]
    assert np.array_equal(rebuilt[3]["image"], ds[3]["image"])


def test_dirichlet_partition_is_non_iid(cache_dir):
    from datasets import concatenate_datasets

    parts_in = concatenate_datasets([load_split(d, "train", 60, 0, 8, cache_dir) for d in DOMAINS])
    parts = partition(parts_in, 6, by="domain", alpha=0.2, seed=1)
    assert sum(len(p) for p in parts) == len(parts_in)
    shares = [np.mean(np.asarray(p["domain"]) == "source") for p in parts if len(p)]
    assert max(shares) - min(shares) > 0.3
    with pytest.raises(FlSimError, match="unknown partition column"):
        partition(parts_in, 2, by="weather")


@pytest.mark.parametrize("kind", ["dirichlet", "iid"])
def test_partition_rows_are_the_partitioners_own(cache_dir, kind):
    """Rows read from the partitioner's assignment equal what its load_partition selects, partition by
    partition (the read a 100,000-device fleet cannot afford)."""
    from datasets import concatenate_datasets

    from fl_sim.world.data import _partitioner, partition_indices, partition_rows

    ds = concatenate_datasets([load_split(d, "train", 40, 0, 8, cache_dir) for d in DOMAINS])
    ds = ds.add_column("row", np.arange(len(ds))).select_columns(["domain", "row"])
    fast = partition_rows(ds, 7, "row", alpha=0.3, seed=2, kind=kind)
    part = _partitioner(ds, 7, "domain", 0.3, 2, kind)
    slow = [np.asarray(part.load_partition(i).with_format("numpy")[:]["row"]) for i in range(7)]
    assert partition_indices(part) is not None and len(fast) == 7
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow)) and sum(map(len, fast)) == len(ds)


def test_combinations_take_each_parts_shift():
    from fl_sim.world.domains import COMBINED, combine, domain_error

    nd = get_domain("novel+dusk")
    assert nd.shapes == DOMAINS["novel"].shapes and nd.colours == DOMAINS["dusk"].colours
    assert (nd.brightness, nd.noise_std) == (DOMAINS["dusk"].brightness, DOMAINS["dusk"].noise_std)
    dd = get_domain("digits+dusk")
    assert dd.shapes == DOMAINS["digits"].shapes and dd.colours == DOMAINS["dusk"].colours
    assert set(COMBINED) == {"novel+dusk", "digits+dusk"}
    with pytest.raises(ValueError, match="'novel' and 'digits' in 'novel\\+digits' both shift the shapes"):
        combine("novel+digits")
    with pytest.raises(ValueError, match="write it 'novel\\+dusk'"):
        combine("dusk+novel")
    assert "not a shifted built-in domain" in domain_error("source+dusk")
    assert domain_error("digits+dusk") is None and domain_error("moon").startswith("unknown domain 'moon'")


def test_combined_domain_scenes_use_its_shapes_and_are_seeded_apart():
    from fl_sim.world.data import domain_key

    a = generate("digits+dusk", "test", 20, 0, 8)
    shapes = lambda rows: {o.shape for r in rows for o in parse_caption(r["caption"])}  # noqa: E731
    assert shapes(a) <= set(DOMAINS["digits"].shapes)
    b = generate("novel+dusk", "test", 20, 0, 8)
    assert shapes(b) <= set(DOMAINS["novel"].shapes)
    assert [domain_key(d) for d in DOMAINS] == list(range(len(DOMAINS)))  # built-ins seed as they always did
    assert domain_key("novel+dusk") == domain_key("novel+dusk") >= 1000
    assert domain_key("novel+dusk") != domain_key("digits+dusk")


def test_compositional_cells_cover_every_factor_mix_but_the_held_out():
    from fl_sim.world.domains import COMBINED, FACTORS, compositional_cells

    cells = compositional_cells()
    key = lambda d: tuple(getattr(d, f) for f in FACTORS)  # noqa: E731
    seen = {key(c) for c in cells}
    assert len(seen) == len(cells) == 3 * 2 * 2 * 2 - len(COMBINED)
    assert not seen & {key(get_domain(h)) for h in COMBINED}
    assert all(key(d) in seen for d in DOMAINS.values())  # the four domains are cells themselves
    # every pair of a held-out combination's factors is seen together somewhere (only the triple is new)
    nd = key(get_domain("novel+dusk"))
    for i in range(len(FACTORS)):
        for j in range(i + 1, len(FACTORS)):
            assert any(k[i] == nd[i] and k[j] == nd[j] for k in seen)


def test_released_pages_leave_a_split_readable_and_unmapped(cache_dir):
    """A worker drops its mapping of a split after reading rows; the rows (and the split) read the same."""
    from fl_sim.world.data import release_pages

    ds = load_split("source", "train", 400, 0, 8, cache_dir)
    files = {f["filename"] for f in ds.cache_files}

    def mapped() -> int:  # kB of the split's files this process maps
        total, inside = 0, False
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split()
                if "-" in head[0] and len(head) >= 5:  # a mapping's first line
                    inside = len(head) >= 6 and head[5] in files
                elif inside and head[0] == "Rss:":
                    total += int(head[1])
        return total

    before = ds[[3, 200, 399]]["image"].copy()
    rows = ds[np.arange(0, 400, 7)]
    assert mapped() > 0
    release_pages(ds)
    assert mapped() == 0
    again = ds[[3, 200, 399]]["image"]
    release_pages(ds)  # again: the ranges found the first time
    assert np.array_equal(again, before) and len(rows["image"]) == 58 and mapped() == 0
