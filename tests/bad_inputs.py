"""A corpus of malformed inputs to ``fl-sim``: config files, ``--set`` values, fleet traces, run directories
and checkpoints. Each case is ``(name, files, argv, expected)``: the files to write (path relative to a
scratch folder -> text or bytes; a value of ``None`` makes a directory), the command line (``{dir}`` is
the scratch folder), and a string the one-line error must contain (the offending key or file).
Used by ``tests/unit/app/test_bad_input.py`` (in process) and ``python -m benchmarks startup`` (time to the error).
"""

import json

GOOD = ('zoo = "tiny"\nrounds = 2\noutput_dir = "{dir}/runs"\n'
        "[fleet]\nnum_devices = 4\n[strategy]\nclients_per_round = 2\n")
ROW = {"device_id": 0, "tier": "tiny-high", "compute_ms_per_sample": 50.0, "uplink_kbps": 5000.0,
       "downlink_kbps": 20000.0, "active_period_s": 1000.0, "active_fraction": 1.0, "phase_s": 0.0,
       "shift_round": 2, "shift_domain": "dusk"}


def _with(**sections) -> str:
    """``GOOD`` plus top-level keys (``top``) and extra lines per section."""
    text = GOOD.replace("[fleet]\n", "[fleet]\n" + sections.pop("fleet", ""))
    text = text.replace("[strategy]\n", "[strategy]\n" + sections.pop("strategy", ""))
    return sections.pop("top", "") + text + "".join(f"[{k}]\n{v}" for k, v in sections.items())


def _rows(n=4, **change):
    return [ROW | {"device_id": i} | change for i in range(n)]


def _csv(rows, columns=None) -> str:
    columns = columns or list(ROW)
    return ",".join(columns) + "\n" + "".join(",".join(str(r.get(c, "")) for c in columns) + "\n" for r in rows)


def _trace_case(name, text, suffix, expected):
    return (name, {f"t.{suffix}": text, "e.toml": _with(fleet='trace = "t.' + suffix + '"\n')},
            ["run", "{dir}/e.toml"], expected)


def _run(name, text, expected, *extra):
    return (name, {"e.toml": text}, ["run", "{dir}/e.toml", *extra], expected)


def _png(i: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (40 * i % 256, 90, 160)).save(buf, format="PNG")
    return buf.getvalue()


def _dataset_case(name, last_row: dict, expected, extra_files=None):
    """An image folder ``d`` of three images whose third row is ``last_row``, as domain ``mine``."""
    rows = [{"file_name": f"img{i}.png", "question": "which colour?", "answer": "blue"} for i in range(2)]
    files = {f"d/img{i}.png": _png(i) for i in range(3)} | (extra_files or {})
    files["d/metadata.jsonl"] = "".join(json.dumps(r) + "\n" for r in rows + [last_row])
    files["e.toml"] = _with(**{"domains.mine": 'path = "d"\n'})
    return (name, files, ["run", "{dir}/e.toml"], expected)


def _nan_tiff() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), np.nan, np.float32), mode="F").save(buf, format="TIFF")
    return buf.getvalue()


def _latin1_case():
    """``_dataset_case``'s folder with its metadata written in Latin-1 (a question with an accent)."""
    name, files, argv, _ = _dataset_case("", {"file_name": "img2.png", "question": "caf\u00e9?", "answer": "blue"}, "")
    files["d/metadata.jsonl"] = files["d/metadata.jsonl"].replace("\\u00e9", "\u00e9").encode("latin-1")
    return ("Latin-1 metadata", files, argv, "metadata.jsonl line 3 is not UTF-8 text (byte 0xe9)")


def _named_domain(name, key, expected):
    return _run(name, _with(**{f"domains.{key}": 'path = "d"\n'}), expected)


def _processor_case(name, change: dict, expected):
    """A LLaVA checkpoint ``ck`` with its own processor (a word-level tokenizer, an image processor and a
    chat template that places the image), as tier ``mine``, its files then changed by ``change`` (file ->
    content, ``None`` removes it): the processor's files are what is wrong, so nothing needs real weights."""
    import numpy as np
    from safetensors.numpy import save
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(["<unk>", "</s>", "<image>", "what", "?"])}, "<unk>"))
    tok.pre_tokenizer = Whitespace()
    files = {"config.json": json.dumps({"model_type": "llava", "vision_config": {}, "text_config": {},
                                        "image_token_index": 2}),
             "model.safetensors": save({"w": np.zeros(1, np.float32)}), "tokenizer.json": tok.to_str(),
             "tokenizer_config.json": json.dumps({"eos_token": "</s>", "processor_class": "LlavaProcessor"}),
             "preprocessor_config.json": json.dumps({"image_processor_type": "CLIPImageProcessor"}),
             "chat_template.jinja": "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}"
                                    "<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"}
    files = {f"ck/{k}": v for k, v in (files | change).items() if v is not None}
    return (name, files | {"e.toml": _with(models='tiers = { mine = "ck" }\n')}, ["run", "{dir}/e.toml"], expected)


CASES = [
    # ------------------------------------------------------------ the file itself
    ("undecodable bytes", {"e.toml": b"rounds = 3\n\xff\xfe\n"}, ["run", "{dir}/e.toml"], "not UTF-8"),
    ("a directory", {"e.toml": None}, ["run", "{dir}/e.toml"], "is a directory"),
    ("an empty file", {"e.toml": ""}, ["run", "{dir}/e.toml"], "is empty"),
    ("only comments", {"e.toml": "# nothing\n"}, ["run", "{dir}/e.toml"], "sets nothing"),
    ("missing file", {}, ["run", "{dir}/nope.toml"], "nope.toml"),
    ("malformed TOML", {"e.toml": "rounds = ["}, ["run", "{dir}/e.toml"], "malformed TOML"),
    ("a comparison, not an experiment", {"e.toml": 'base = "x.toml"\nseeds = [0]\n'}, ["run", "{dir}/e.toml"],
     "unknown key 'base'"),
    # ------------------------------------------------------------ keys and values
    _run("unknown key", _with(top="roundz = 3\n"), "unknown key 'roundz'"),
    _run("boolean rounds", _with(top="rounds = true\n").replace("rounds = 2\n", ""), "rounds: expected a number"),
    _run("zero rounds", _with().replace("rounds = 2", "rounds = 0"), "rounds: Input should be greater"),
    _run("infinite lr", _with(strategy="lr = inf\n"), "strategy.lr"),
    _run("NaN lr", _with(strategy="lr = nan\n"), "strategy.lr"),
    _run("a LoRA rank wider than the tiers", _with(strategy="lora_r = 1000000\n"),
         "strategy.lora_r = 1000000: larger than the width of tier"),
    _run("infinite over_commit", _with(strategy="over_commit = inf\n"), "strategy.over_commit"),
    _run("a teacher that is not a directory", _with(models='teacher = "nowhere"\n'), "models.teacher = "),
    ("a tier checkpoint without config.json",
     {"ck/model.safetensors": b"\0", "e.toml": _with(models='tiers = { mine = "ck" }\n')},
     ["run", "{dir}/e.toml"], "models.tiers.mine"),
    ("a model family fl-sim has no adapter for",
     {"ck/model.safetensors": b"\0", "ck/config.json": json.dumps(
         {"model_type": "paligemma", "vision_config": {}, "text_config": {}, "image_token_index": 4}),
      "e.toml": _with(models='tiers = { mine = "ck" }\n')},
     ["run", "{dir}/e.toml"], "model type 'paligemma' is not supported; fl-sim runs gemma3, idefics3"),
    ("a truncated checkpoint", {"ck/model.safetensors": b"\x10\0\0\0\0\0\0\0{", "ck/config.json": json.dumps(
        {"model_type": "llava", "vision_config": {}, "text_config": {}, "image_token_index": 4}),
        "e.toml": _with(models='tiers = { mine = "ck" }\n')},
     ["run", "{dir}/e.toml"], "ck': model.safetensors is not whole safetensors"),
    _processor_case("a processor without an image processor", {"preprocessor_config.json": None},
                    "ck': a tokenizer but no image processor"),
    _processor_case("a chat template that drops the image", {"chat_template.jinja": "{% for m in messages %}"
                                                             "{{ m['content'][-1]['text'] }}{% endfor %}"},
                    "ck': its chat template renders no image in a user turn with an image"),
    _processor_case("a tokenizer.json that does not load", {"tokenizer.json": '{"model": '},
                    "ck': tokenizer.json does not load"),
    _processor_case("an image token outside the tokenizer", {"config.json": json.dumps(
        {"model_type": "llava", "vision_config": {}, "text_config": {}, "image_token_index": 9})},
                    "ck': the model's image token id 9 is not in its tokenizer (5 tokens)"),
    _processor_case("a processor class transformers lacks", {"tokenizer_config.json": json.dumps(
        {"processor_class": "NoSuchProcessor"})}, "tokenizer_config.json names processor_class 'NoSuchProcessor'"),
    _processor_case("processor settings that are not JSON", {"preprocessor_config.json": "{image"},
                    "ck': preprocessor_config.json does not parse as JSON"),
    _run("a user domain that is not a directory", _with(**{"domains.mine": 'path = "nowhere"\n'}),
         "domains.mine ("),
    _run("a user domain named like a built-in one", _with(**{"domains.dusk": 'path = "nowhere"\n'}),
         "domains.dusk: the name is taken"),
    _named_domain("a domain name with a slash", '"a/b"', "a domain name is a plain name"),
    _named_domain("an empty domain name", '""', "a domain name is a plain name"),
    _named_domain("a domain name climbing out of the cache", '"/../../x"', "a domain name is a plain name"),
    _named_domain("a 250-character domain name", "x" * 250, "a domain name is a plain name"),
    _named_domain("a NUL in a domain name", '"a\\u0000b"', "a domain name is a plain name"),
    _dataset_case("a dataset image outside its folder", {"file_name": "../x.png", "question": "q?", "answer": "a"},
                  "row 3: the image", {"x.png": _png(7)}),
    _dataset_case("a dataset image by an absolute path", {"file_name": "/etc/passwd", "question": "q?",
                                                          "answer": "a"}, "row 3"),
    _dataset_case("a list as an answer", {"file_name": "img2.png", "question": "q?", "answer": ["blue", "BLUE"]},
                  "/answer) changed from string to array"),  # the JSON builder's own words
    _dataset_case("an answer of articles only", {"file_name": "img2.png", "question": "q?", "answer": "the"},
                  "row 3: the answer 'the' normalises to nothing"),
    _dataset_case("a reserved token as an answer", {"file_name": "img2.png", "question": "q?", "answer": "<eos>"},
                  "row 3: the answer holds '<eos>'"),
    _dataset_case("a reserved token in a question", {"file_name": "img2.png", "question": "an <image>?",
                                                     "answer": "a"}, "row 3: the question holds '<image>'"),
    _dataset_case("a 100,000-word question", {"file_name": "img2.png", "question": "why " * 100_000,
                                              "answer": "a"}, "row 3: the question has 100000 words"),
    _dataset_case("an answer longer than a model answers", {"file_name": "img2.png", "question": "q?",
                                                            "answer": "very " * 30}, "row 3: the answer has 30"),
    _dataset_case("a row without its file_name", {"question": "which colour?", "answer": "blue"},
                  "row 3: the image is refused: no image"),
    _latin1_case(),
    _dataset_case("a float image of NaN", {"file_name": "nan.tiff", "question": "which colour?", "answer": "blue"},
                  "row 3: the image 'nan.tiff' is refused: NaN", {"d/nan.tiff": _nan_tiff()}),
    _run("an unknown device", _with(simulation='device = "tpu"\n'), "simulation.device"),
    _run("a negative GPU share", _with(simulation="num_gpus_per_client = -1\n"), "simulation.num_gpus_per_client"),
    _run("an unknown precision", _with(simulation='precision = "fp8"\n'), "simulation.precision"),
    _run("more clients than devices", _with().replace("clients_per_round = 2", "clients_per_round = 10"),
         "clients_per_round"),
    _run("a trillion devices", _with(fleet="num_devices = 1_000_000_000_000\n").replace("num_devices = 4\n", ""),
         "fleet.num_devices"),
    _run("a trillion rounds", _with().replace("rounds = 2", "rounds = 1_000_000_000_000"), "results (rounds)"),
    _run("a billion samples", _with(fleet="samples_per_round = 1_000_000_000\n"), "fleet.samples_per_round"),
    _run("a name that climbs out", _with(top='name = "../x"\n'), "name '../x' must be a plain name"),
    _run("a name with a slash", _with(top='name = "a/b"\n'), "name 'a/b' must be a plain name"),
    _run("unknown strategy", _with(strategy='name = "fedsgd"\n'), "strategy.name"),
    _run("unknown zoo", _with().replace('zoo = "tiny"', 'zoo = "huge"'), "unknown model zoo preset 'huge'"),
    _run("unknown tier", _with(fleet='tiers = { phone-high = 1.0 }\n'), "fleet.tiers"),
    _run("unknown domain", _with(fleet='shift_domains = { moon = 1.0 }\n'), "shift_domains"),
    _run("shift rounds reversed", _with(fleet="shift_round = [3, 2]\n"), "shift_round"),
    _run("a section as a number", _with(top="eval = 3\n"), "eval: Input should be"),
    _run("zero upload budget", _with(**{"strategy.uts": "budget = 0\n"}), "strategy.uts.budget"),
    _run("five-bit downlink", _with(**{"strategy.dwc": "bits = 5\n"}), "strategy.dwc.bits"),
    _run("no distillation loss", _with(**{"strategy.akd": "w_ce = 0\nw_kl = 0\nw_feat = 0\n"}), "strategy.akd"),
    _run("a probability above one", _with(fleet="crash_prob = 1.5\n"), "fleet.crash_prob"),
    _run("a boolean probability", _with(fleet="crash_prob = true\n"), "fleet.crash_prob: expected a number"),
    _run("a NUL in a path", _with(fleet='trace = "a\\u0000b.csv"\n'), "fleet.trace: contains a NUL character"),
    _run("a negative seed", _with(top="seed = -1\n"), "seed"),
    _run("zero CPUs per client", _with(simulation="num_cpus_per_client = 0\n"),
         "simulation.num_cpus_per_client"),
    _run("a hundredth of a CPU per client", _with(simulation="num_cpus = 2\nnum_cpus_per_client = 0.01\n"),
         "Ray workers (simulation.num_cpus / num_cpus_per_client)"),
    _run("a schedule with an unknown domain", _with(**{"fleet.schedule": 'domains = { moon = 1.0 }\n'}),
         "fleet.schedule: unknown domain 'moon'"),
    _run("a schedule transition longer than the run", _with(**{"fleet.schedule": "stage_rounds = [3, 4]\n"
                                                                               "ramp_rounds = [0, 2]\n"}),
         "longer than the run"),
    _run("a schedule with stages out of order", _with(**{"fleet.schedule": "stages = [4, 2]\n"}),
         "fleet.schedule: stages must be [min, max]"),
    _run("a range upside down", _with(**{"fleet.compute_ms_per_sample": "low = 100\nhigh = 10\n"}),
         "fleet.compute_ms_per_sample"),
    _run("a replayed run that does not exist", _with(fleet='replay = "no-such-run"\n'), "no-such-run"),
    # ------------------------------------------------------------ --set
    _run("--set unknown key", GOOD, "unknown key 'roundz'", "--set", "roundz=3"),
    _run("--set a word for a number", GOOD, "rounds: Input should be a valid integer", "--set", "rounds=abc"),
    _run("--set without a value", GOOD, "--set expects KEY=VALUE", "--set", "rounds"),
    _run("--set inside a value", GOOD, "rounds.x", "--set", "rounds.x=1"),
    _run("--set infinity", GOOD, "strategy.lr", "--set", "strategy.lr=inf"),
    _run("--set a boolean for a count", GOOD, "fleet.num_devices", "--set", "fleet.num_devices=true"),
    # ------------------------------------------------------------ fleet traces
    ("a trace that does not exist", {"e.toml": _with(fleet='trace = "none.csv"\n')}, ["run", "{dir}/e.toml"],
     "none.csv"),
    _trace_case("a CSV trace with only a header", _csv([]), "csv", "holds no devices"),
    _trace_case("a CSV trace missing a column", _csv(_rows(), [c for c in ROW if c != "phase_s"]), "csv",
                "missing column(s) phase_s"),
    _trace_case("a CSV trace with an unknown column", _csv([r | {"x": 1} for r in _rows()], [*ROW, "x"]), "csv",
                "unknown column(s) x"),
    _trace_case("a JSON trace that is not a list", json.dumps({"devices": _rows()}), "json", "JSON list"),
    _trace_case("a JSON trace that is not JSON", "[{", "json", "not valid JSON"),
    _trace_case("a trace value of the wrong type", json.dumps(_rows(compute_ms_per_sample="fast")), "json",
                "row 1 column compute_ms_per_sample"),
    _trace_case("a NaN in a trace", _csv(_rows(uplink_kbps="nan")), "csv", "row 1 column uplink_kbps"),
    _trace_case("a negative bandwidth", _csv(_rows(downlink_kbps=-5)), "csv", "row 1 column downlink_kbps"),
    _trace_case("duplicate device ids", json.dumps([r | {"device_id": 0} for r in _rows()]), "json",
                "device 0 appears twice"),
    _trace_case("a fractional device id", json.dumps(_rows()[:1] + [ROW | {"device_id": 1.5}]), "json",
                "row 2 column device_id"),
    _trace_case("an empty JSON trace", "[]", "json", "holds no devices"),
    _trace_case("a huge number in a trace", json.dumps(_rows()).replace("50.0", "1" + "0" * 400, 1), "json",
                "row 1 column compute_ms_per_sample"),
    _trace_case("a schedule in a trace that does not parse", _csv(_rows(schedule="source@1; dusk@3"),
                                                                  [*ROW, "schedule"]), "csv",
                "row 1 column schedule (device 0)"),
    _trace_case("an unknown tier in a trace", _csv(_rows(tier="phone-x")), "csv", "row 1 column tier"),
    ("a trace with fewer devices than asked", {"t.json": json.dumps(_rows(2)),
                                              "e.toml": _with(fleet='trace = "t.json"\n')},
     ["run", "{dir}/e.toml"], "fewer than fleet.num_devices"),
    # ------------------------------------------------------------ comparisons
    ("an undecodable comparison", {"c.toml": b"\xff\xfe"}, ["compare", "{dir}/c.toml"], "not UTF-8"),
    ("a comparison without its base", {"c.toml": 'base = "none.toml"\n[[runs]]\nlabel = "a"\nstrategy = "fedavg"\n'},
     ["compare", "{dir}/c.toml"], "none.toml"),
    ("a comparison whose name climbs out", {"e.toml": GOOD, "c.toml": 'name = "../up"\nbase = "e.toml"\n[[runs]]\n'
                                                                         'label = "a"\nstrategy = "fedavg"\n'},
     ["compare", "{dir}/c.toml"], "name: String should match pattern"),
    ("a comparison with an unknown strategy", {"e.toml": GOOD, "c.toml": 'base = "e.toml"\n[[runs]]\nlabel = "a"\n'
                                                                         'strategy = "fedsgd"\n'},
     ["compare", "{dir}/c.toml"], "fedsgd"),
    ("a comparison with too many clients", {"e.toml": GOOD, "c.toml": 'base = "e.toml"\n[[runs]]\nlabel = "a"\n'
                                                                       'strategy = "fedavg"\nset = { "strategy.'
                                                                       'clients_per_round" = 9 }\n'},
     ["compare", "{dir}/c.toml"], "clients_per_round"),
    # ------------------------------------------------------------ resume and checkpoints
    ("resuming what is not a run", {"d/x.txt": "x"}, ["run", "--resume", "{dir}/d"], "not a run directory"),
    ("resuming with another strategy", {"d/config.toml": GOOD}, ["run", "--resume", "{dir}/d", "--set",
                                                                   "strategy.name=tent"], "strategy.name"),
    ("a checkpoint that is not a directory", {}, ["pretrain", "--zoo", "tiny", "--model", "teacher={dir}/none"],
     "--model teacher="),
    ("a checkpoint without a config", {"ck/weights.bin": b"\0"}, ["evaluate", "--zoo", "tiny", "--model",
                                                                   "tiny-low={dir}/ck"], "no config.json"),
    ("a JSON report into a missing folder", {}, ["evaluate", "--zoo", "tiny", "--json", "{dir}/no/such/t.json"],
     "--json"),
    ("a checkpoint for an unknown role", {"ck/config.json": "{}"}, ["pretrain", "--zoo", "tiny", "--model",
                                                                     "phone={dir}/ck"], "unknown role 'phone'"),
]


def write_case(folder, case) -> list[str]:
    """Write ``case``'s files under ``folder``; returns its command line."""
    _, files, argv, _ = case
    for rel, content in files.items():
        path = folder / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{dir}", str(folder)))
    return [a.replace("{dir}", str(folder)) for a in argv]
