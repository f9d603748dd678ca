"""`dsco_hub.config`: every check at its boundary with its one-line message, the derived values, and what a rerun
compares. Fast (no model, no data): the test the mutation run of `config.py` leans on (tests/README.md)."""

from __future__ import annotations

import dataclasses

import pytest

from dsco_hub.config import (
    ConcentrateConfig,
    EvalConfig,
    HubConfig,
    NOptConfig,
    PriorTrainConfig,
    SamplerConfig,
    SourceConfig,
    TeacherConfig,
    auto_doping_ratio,
    derive_seed,
    first_difference,
    is_commit_sha,
    option_name,
    run_settings,
)
from dsco_hub.errors import ConfigError


def _refused(config, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.validate()
    assert str(err.value) == message


def test_derive_seed_is_a_stable_63_bit_hash_of_its_parts():
    assert derive_seed(0, 1, 2) == 593687720183107825  # sha256("0/1/2"), first 8 bytes little-endian, 63 bits
    assert derive_seed(0, 1, 2) == derive_seed("0", "1", "2")  # parts joined as text
    assert derive_seed(0, 1, 2) != derive_seed(0, 2, 1) and derive_seed(0, 12) != derive_seed(0, 1, 2)
    seeds = [derive_seed(7, "eval", r) for r in range(200)]
    assert all(0 <= s < 2**63 for s in seeds) and max(seeds) >= 2**62  # the top bit is used, not only low ones


# ---------------------------------------------------------------------------------------------------------------
# EvalConfig, NOptConfig, HubConfig
# ---------------------------------------------------------------------------------------------------------------


def test_eval_config_boundaries():
    EvalConfig(runs=1, epochs=1, batch_size=1, lr=1e-9, model="resnet18").validate()
    _refused(EvalConfig(model="vit"), "--eval-model='vit' is unknown; use one of auto, convnet3, resnet18.")
    _refused(EvalConfig(runs=0), "--runs=0 must be at least 1; pass --runs 3 for the standard protocol.")
    _refused(EvalConfig(epochs=0), "--epochs=0 must be at least 1; the protocol uses --epochs 300.")
    _refused(EvalConfig(batch_size=0), "EvalConfig.batch_size=0 must be at least 1; the protocol uses 256.")
    _refused(EvalConfig(lr=0.0), "EvalConfig.lr=0.0 must be positive; the protocol uses 0.01.")


def test_soft_label_settings(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "teacher_config.json").write_text("{}")
    EvalConfig(labels="soft", teacher=str(teacher), temperature=1e-9).validate()
    _refused(
        EvalConfig(labels="fuzzy"),
        "--eval-labels='fuzzy' is unknown; use hard (the set's labels) or soft (with --teacher DIR).",
    )
    _refused(
        EvalConfig(labels="soft"),
        "--eval-labels=soft needs a teacher: pass --teacher DIR (a folder written by `dsco-hub teacher train`).",
    )
    _refused(
        EvalConfig(teacher=str(teacher)),
        f"--teacher={str(teacher)!r} is only used with soft labels: add --eval-labels soft, or drop --teacher.",
    )
    _refused(
        EvalConfig(labels="soft", teacher=str(tmp_path)),
        f"--teacher={str(tmp_path)!r} is not a teacher folder (no teacher_config.json); pass a folder written by "
        "`dsco-hub teacher train SOURCE --out DIR`.",
    )
    for temperature in (0.0, float("inf"), float("nan")):
        _refused(
            EvalConfig(labels="soft", teacher=str(teacher), temperature=temperature),
            f"--temperature={temperature} must be a positive number; RDED uses 4 (with mixup).",
        )
    assert (EvalConfig().labels, EvalConfig().teacher, EvalConfig().temperature) == ("hard", None, 4.0)


def test_teacher_config_boundaries():
    TeacherConfig(model="convnet3", epochs=1, max_images=1, seed=0, lr=1e-9, batch_size=1).validate()
    TeacherConfig(model="resnet18", max_images=None).validate()
    refused = [
        (TeacherConfig(model="vit"), "--eval-model='vit' is unknown; use one of auto, convnet3, resnet18."),
        (TeacherConfig(epochs=0), "--epochs=0 must be at least 1; e.g. --epochs 30."),
        (TeacherConfig(max_images=0), "--max-images=0 must be at least 1; omit it to train on the whole split."),
        (TeacherConfig(seed=-1), "--seed=-1 must be non-negative."),
        (TeacherConfig(lr=0.0), "--lr=0.0 must be positive; the students use 0.01."),
        (TeacherConfig(batch_size=0), "--batch-size=0 must be at least 1."),
    ]
    for config, message in refused:
        _refused(config, message)
    data = TeacherConfig(source=SourceConfig(source="x")).to_dict()
    assert data["source"]["source"] == "x" and (data["epochs"], data["batch_size"], data["lr"]) == (30, 256, 0.01)


def test_nopt_config_boundaries():
    for ok in (
        NOptConfig(window=0.0, iters=0, targets=2, width=1, ensemble=1, feature_epochs=1, feature_images=1),
        NOptConfig(window=1.0, target_batch=0, kernel="linear", features="ensemble"),
        NOptConfig(target_batch=2, features="trained", lr=1e-9),
    ):
        ok.validate()
    refused = [
        (NOptConfig(window=-0.1), "--nopt-window=-0.1 must be in [0, 1] (fraction of the steps)."),
        (NOptConfig(window=1.1), "--nopt-window=1.1 must be in [0, 1] (fraction of the steps)."),
        (NOptConfig(features="big"), "--nopt-features='big' is unknown; use one of random, ensemble, trained."),
        (NOptConfig(ensemble=0), "--nopt-ensemble=0 must be at least 1 (random maps per iteration)."),
        (NOptConfig(feature_epochs=0), "--nopt-feature-epochs=0 must be at least 1."),
        (NOptConfig(feature_images=0), "--nopt-feature-images=0 must be at least 1."),
        (NOptConfig(iters=-1), "--nopt-iters=-1 must be >= 0 (0 = plain sampling)."),
        (NOptConfig(lr=0.0), "--nopt-lr=0.0 must be positive; e.g. --nopt-lr 0.05."),
        (NOptConfig(targets=1), "--nopt-targets=1 must be at least 2 (the MMD needs a set)."),
        (NOptConfig(kernel="rbf"), "--kernel='rbf' is unknown; use one of gaussian, linear."),
        (NOptConfig(width=0), "--nopt-width=0 must be at least 1."),
        (
            NOptConfig(target_batch=1),
            "--nopt-target-batch=1 must be at least 2 (the MMD needs a set), or 0 for all targets.",
        ),
    ]
    for config, message in refused:
        _refused(config, message)


def test_nopt_target_batch_default_grows_with_the_synthetic_images():
    default = NOptConfig()
    assert [default.batch_for(n) for n in (1, 2, 12, 13, 50)] == [0, 128, 128, 130, 500]
    assert NOptConfig(target_batch=64).batch_for(1) == 64 and NOptConfig(target_batch=0).batch_for(50) == 0


def test_hub_config_boundaries_and_the_token_never_saved():
    HubConfig(max_retries=0, retry_wait=0.0, commit_max_files=1, commit_max_bytes=1, endpoint="http://x").validate()
    HubConfig(endpoint="https://huggingface.co").validate()
    _refused(HubConfig(max_retries=-1), "max_retries=-1 must be >= 0 (0 = no retry).")
    _refused(HubConfig(retry_wait=-0.5), "retry_wait=-0.5 must be >= 0 seconds.")
    _refused(HubConfig(commit_max_files=0), "commit_max_files=0 must be at least 1.")
    _refused(HubConfig(commit_max_bytes=0), "commit_max_bytes=0 must be at least 1.")
    _refused(
        HubConfig(endpoint="ftp://hub"),
        "--endpoint='ftp://hub' must be an http(s) URL, e.g. --endpoint https://huggingface.co.",
    )
    hub = HubConfig(token="hf_secret", repo_id="a/b")
    assert "token" not in hub.to_dict() and hub.to_dict()["repo_id"] == "a/b" and "hf_secret" not in repr(hub)
    assert (hub.max_retries, hub.retry_wait, hub.max_wait) == (5, 2.0, 600.0)


# ---------------------------------------------------------------------------------------------------------------
# ConcentrateConfig
# ---------------------------------------------------------------------------------------------------------------


def test_doping_counts_round_half_to_even():
    assert (ConcentrateConfig(ipc=1, doping_ratio=0.5).num_doped, ConcentrateConfig(ipc=1).num_synthetic) == (0, 1)
    assert ConcentrateConfig(ipc=3, doping_ratio=0.5).num_doped == 2  # round(1.5) = 2
    assert ConcentrateConfig(ipc=5, doping_ratio=0.5).num_doped == 2  # round(2.5) = 2
    assert ConcentrateConfig(ipc=10, doping_ratio=0.3).num_synthetic == 7


def test_auto_doping_ratio_grows_with_ipc():
    assert [auto_doping_ratio(ipc) for ipc in (1, 10, 50)] == [1 / 11, 0.5, 50 / 60]
    counts = [ConcentrateConfig(ipc=ipc, doping_ratio="auto").num_doped for ipc in (1, 2, 10, 50, 90)]
    assert counts == [0, 0, 5, 42, 81]  # round(1/11), round(4/12), round(5), round(41.67), round(81)
    assert ConcentrateConfig(ipc=10, doping_ratio="auto").rho == 0.5
    # data-free: nothing real to dope with, so auto means 0 (and is accepted; a number > 0 is refused)
    free = ConcentrateConfig(ipc=10, doping_ratio="auto", data_free=True, labels=("a", "b"))
    free.validate()
    assert (free.rho, free.num_doped, free.num_synthetic) == (0.0, 0, 10)


def test_one_sampler_config_built_from_the_run_and_frozen():
    cfg = ConcentrateConfig(steps=7, guidance_scale=1.5, eta=0.3, sample_batch_size=5, dtype="float32")
    sampler = cfg.sampler()
    assert sampler == SamplerConfig(steps=7, guidance_scale=1.5, eta=0.3, batch_size=5, dtype="float32")
    assert ConcentrateConfig().sampler() == SamplerConfig()  # the same defaults as the command line
    with pytest.raises(dataclasses.FrozenInstanceError):
        sampler.steps = 3  # type: ignore[misc]
    assert "sampler" not in cfg.to_dict()  # dsco_config.json keeps the flat options it always had
    _refused(SamplerConfig(batch_size=0), "--sample-batch-size=0 must be at least 1.")
    _refused(SamplerConfig(eta=2.0), "--eta=2.0 must be in [0, 1] (0 = deterministic DDIM).")


def test_pool_and_its_guidance():
    assert [ConcentrateConfig().pool_for(n) for n in (1, 64, 65)] == [256, 256, 260]
    assert ConcentrateConfig(pool_size=3).pool_for(100) == 3
    assert ConcentrateConfig(guidance_scale=3.0).pool_guidance == 3.0
    assert ConcentrateConfig(guidance_scale=3.0, pool_guidance_scale=0.0).pool_guidance == 0.0


@pytest.mark.parametrize(
    "kwargs, rows",
    [
        (dict(method="random", ipc=7), 7),
        (dict(method="herding", ipc=7, herding_pool=50), 50),
        (dict(method="herding", ipc=70, herding_pool=50), 70),
        (dict(method="dsco", ipc=7), 500),  # NOpt's targets
        (dict(method="dsco", ipc=7, data_free=True), 7),
        (dict(method="dsco", ipc=7, doping_ratio=0.5, herding_pool=900), 900),  # doping by herding
        (dict(method="dsco", ipc=7, doping_ratio=0.5, doping_select="random", herding_pool=900), 500),
        (dict(method="dsco", ipc=1, doping_ratio=0.4, herding_pool=900), 500),  # round(0.4) = 0: no doping
        (dict(method="diffusion", ipc=7, herding_pool=900), 7),
    ],
)
def test_rows_per_class_a_run_can_draw_from(kwargs, rows):
    assert ConcentrateConfig(**kwargs).rows_per_class == rows


FREE = dict(data_free=True, labels=("a", "b"))  # a data-free run, for the options that need one


def test_concentrate_config_accepts_its_boundaries():
    free = dict(data_free=True, labels=("a", "B"))
    for config in (
        ConcentrateConfig(ipc=1, herding_pool=1, steps=1, guidance_scale=0.0, eta=0.0, sample_batch_size=1, seed=0),
        ConcentrateConfig(eta=1.0, doping_ratio=1.0, oversample=2),
        ConcentrateConfig(method="diffusion", dtype="bfloat16", kernel="linear", pool_size=2, **free),
        ConcentrateConfig(pool_guidance_scale=0.0, feature_seed=0, **free),
        ConcentrateConfig(method="random", source=SourceConfig(shuffle_buffer=0), push=HubConfig()),
    ):
        config.validate()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="magic"), "--method='magic' is unknown; use one of random, herding, diffusion, dsco."),
        (dict(ipc=0), "--ipc=0 must be at least 1 (images per class); e.g. --ipc 10."),
        (dict(kernel="rbf"), "--kernel='rbf' is unknown; use one of gaussian, linear."),
        (dict(herding_pool=0), "--herding-pool=0 must be at least 1."),
        (
            dict(source=SourceConfig(shuffle_buffer=-1)),
            "--shuffle-buffer=-1 must be >= 0 (rows; 0 keeps the stream's order).",
        ),
        (dict(steps=0), "--steps=0 must be at least 1; e.g. --steps 25."),
        (dict(guidance_scale=-0.5), "--guidance-scale=-0.5 must be >= 0; 1 disables guidance."),
        (dict(eta=-0.1), "--eta=-0.1 must be in [0, 1] (0 = deterministic DDIM)."),
        (dict(eta=1.1), "--eta=1.1 must be in [0, 1] (0 = deterministic DDIM)."),
        (dict(scheduler="euler"), "--scheduler='euler' is unknown; use one of ddim."),
        (dict(sample_batch_size=0), "--sample-batch-size=0 must be at least 1."),
        (dict(dtype="int8"), "--dtype='int8' is unknown; use one of auto, float32, float16, bfloat16."),
        (dict(seed=-1), "--seed=-1 must be non-negative."),
        (dict(doping_ratio=-0.1), "--doping-ratio=-0.1 must be in [0, 1] (0 = all synthetic, 1 = all real) or auto."),
        (dict(doping_ratio=1.5), "--doping-ratio=1.5 must be in [0, 1] (0 = all synthetic, 1 = all real) or auto."),
        (
            dict(doping_ratio="half"),
            "--doping-ratio=half must be in [0, 1] (0 = all synthetic, 1 = all real) or auto.",
        ),
        (
            dict(method="herding", doping_ratio="auto"),
            "--doping-ratio=auto needs --method dsco (doping mixes real images into NOpt's set).",
        ),
        (
            dict(method="random", doping_ratio=0.5),
            "--doping-ratio=0.5 needs --method dsco (doping mixes real images into NOpt's set).",
        ),
        (
            dict(doping_select="best"),
            "--doping-select='best' is unknown; use one of herding, herding-independent, random.",
        ),
        (
            dict(method="herding", data_free=True, labels=("a", "b")),
            "--data-free works with --method dsco or diffusion, not 'herding' (it reads no real image).",
        ),
        (
            dict(data_free=True, labels=("a", "b"), doping_ratio=0.5),
            "--doping-ratio=0.5: doping needs real images, none with --data-free; use 0.",
        ),
        (dict(data_free=True), "--data-free needs class names: pass --labels 'name1,name2,...' or --labels-file."),
        (
            dict(data_free=True, labels=()),
            "--data-free needs class names: pass --labels 'name1,name2,...' or --labels-file.",
        ),
        (dict(data_free=True, labels=("a", " ")), "--labels='a, ' holds an empty name."),
        (
            dict(data_free=True, labels=("a",)),
            "--labels='a' names 1 class; a classification set needs at least 2 classes.",
        ),
        (
            dict(data_free=True, labels=("Cat", "dog", " cat ")),
            "--labels='Cat,dog, cat ' names 'Cat' and ' cat ', the same class (names are matched "
            "case-insensitively); list each class once.",
        ),
        (dict(pool_size=1), "--pool-size=1 must be at least 2."),
        (
            dict(labels=("a", "b")),
            "--labels applies to data-free runs only (the real classes come from SOURCE otherwise); add --data-free, "
            "or drop --labels (--classes picks source classes).",
        ),
        (
            dict(pool_size=64),
            "--pool-size applies to data-free runs only (the real classes come from SOURCE otherwise); add "
            "--data-free, or drop --pool-size.",
        ),
        (
            dict(pool_guidance_scale=1.0),
            "--pool-guidance-scale applies to data-free runs only (their target pool); add --data-free, or drop it.",
        ),
        (dict(feature_seed=-5), "--feature-seed=-5 must be non-negative."),
        (
            dict(preset="imagenette", class_map="map.json"),
            "--class-map applies to classes matched by name; imagenette maps ImageNet classes by position or WordNet "
            "id: drop --class-map.",
        ),
        (
            dict(evaluate=False, test_dataset="user/fmnist-test"),
            "--test-dataset='user/fmnist-test' applies to the evaluation, which --no-eval skips; drop one of them.",
        ),
        (
            dict(evaluate=False, eval=EvalConfig(labels="soft", teacher="teacher-dir")),
            "--teacher='teacher-dir' applies to the evaluation, which --no-eval skips; drop one of them.",
        ),
        (
            dict(source=SourceConfig(classes=())),  # what `--classes ''` or `--classes ,` parse to
            "--classes names no class; list names or label indices (e.g. --classes 'Coat,3'), or omit it for all.",
        ),
        (dict(oversample=0), "--oversample=0 must be at least 1 (1 = no selection)."),
        (
            dict(method="diffusion", oversample=2),
            "--oversample=2 needs --method dsco (it selects among NOpt's images).",
        ),
        (
            dict(data_free=True, labels=("a", "b"), nopt=NOptConfig(features="trained")),
            "--nopt-features=trained trains on real images, which --data-free does not read; use random or ensemble.",
        ),
        (dict(pool_guidance_scale=-1.0, **FREE), "--pool-guidance-scale=-1.0 must be >= 0; 1 disables guidance."),
        (dict(nopt=NOptConfig(window=2.0)), "--nopt-window=2.0 must be in [0, 1] (fraction of the steps)."),
        (dict(eval=EvalConfig(runs=0)), "--runs=0 must be at least 1; pass --runs 3 for the standard protocol."),
        (dict(push=HubConfig(commit_max_files=0)), "commit_max_files=0 must be at least 1."),
    ],
)
def test_concentrate_config_refuses_in_one_line(kwargs, message):
    _refused(ConcentrateConfig(**kwargs), message)


def test_nopt_is_checked_only_for_dsco():
    ConcentrateConfig(method="diffusion", nopt=NOptConfig(window=2.0)).validate()


def test_to_dict_holds_everything_but_the_token():
    data = ConcentrateConfig(push=HubConfig(token="hf_secret", repo_id="a/b"), labels=("x", "y")).to_dict()
    assert data["push"] == {**HubConfig(repo_id="a/b").to_dict()} and "token" not in data["push"]
    assert data["nopt"]["lr"] == 0.05 and data["source"]["split"] == "train" and data["labels"] == ("x", "y")
    assert ConcentrateConfig().to_dict()["push"] is None


# ---------------------------------------------------------------------------------------------------------------
# PriorTrainConfig
# ---------------------------------------------------------------------------------------------------------------


def test_prior_train_config_boundaries():
    PriorTrainConfig(max_steps=1, batch_size=1, label_dropout=0.0, channels=1, checkpoint_every=1).validate()
    for precision in ("auto", "no", "bf16", "fp16"):
        PriorTrainConfig(channels=3, resolution=16, mixed_precision=precision).validate()  # 3 levels: multiples of 4
    PriorTrainConfig(block_out_channels=(8,), norm_num_groups=8, resolution=7).validate()  # 1 level: any size
    refused = [
        (PriorTrainConfig(max_steps=0), "--max-steps=0 must be at least 1."),
        (PriorTrainConfig(batch_size=0), "--batch-size=0 must be at least 1."),
        (PriorTrainConfig(label_dropout=1.0), "--label-dropout=1.0 must be in [0, 1); use 0.1."),
        (PriorTrainConfig(label_dropout=-0.1), "--label-dropout=-0.1 must be in [0, 1); use 0.1."),
        (PriorTrainConfig(lr=0.0), "--lr=0.0 must be positive."),
        (PriorTrainConfig(channels=2), "--channels=2 must be 1 or 3."),
        (
            PriorTrainConfig(block_out_channels=(32, 40), norm_num_groups=16),
            "--block-out-channels=32,40: width 40 is not divisible by --norm-num-groups=16; use multiples of it.",
        ),
        (
            PriorTrainConfig(resolution=30),
            "--resolution=30 must be a multiple of 4 for a 3-level UNet; e.g. --resolution 28.",
        ),
        (
            PriorTrainConfig(resolution=3),
            "--resolution=3 must be a multiple of 4 for a 3-level UNet; e.g. --resolution 4.",
        ),
        (
            PriorTrainConfig(block_out_channels=(16, 16, 16, 16), resolution=12),
            "--resolution=12 must be a multiple of 8 for a 4-level UNet; e.g. --resolution 8.",
        ),
        (
            PriorTrainConfig(mixed_precision="fp8"),
            "--mixed-precision='fp8' must be 'auto', 'no', 'bf16' or 'fp16'; use auto.",
        ),
        (PriorTrainConfig(checkpoint_every=0), "--checkpoint-every=0 must be at least 1."),
    ]
    for config, message in refused:
        _refused(config, message)
    assert PriorTrainConfig().to_dict()["block_out_channels"] == (32, 64, 64)


# ---------------------------------------------------------------------------------------------------------------
# What a rerun compares
# ---------------------------------------------------------------------------------------------------------------


def test_run_settings_scopes_and_what_is_never_compared():
    data = ConcentrateConfig(source=SourceConfig(classes=("a", "b")), push=HubConfig()).to_dict()
    data["command"] = "dsco-hub concentrate"
    data["source_fingerprint"] = "abc"
    rows, whole = run_settings(data, "rows"), run_settings(data, "set")
    assert rows["source.classes"] == ["a", "b"] and rows["nopt.window"] == 0.5 and rows["ipc"] == 10
    never = ("out", "overwrite", "sample_batch_size", "gradient_checkpointing", "torch_compile", "command")
    for key in (*never, "source_fingerprint", "push.max_retries"):
        assert key not in rows and key not in whole, key
    card_only = ("evaluate", "eval.runs", "source.test_split", "test_dataset")
    assert not any(key in rows for key in card_only) and all(key in whole for key in card_only)
    assert set(whole) - set(rows) == {k for k in whole if k in card_only or k.startswith("eval.")}
    assert "source.test_split" in whole and "source.split" in rows  # a prefix match, not a substring one


def test_option_names_of_settings_keys():
    assert option_name("nopt.window") == "--nopt-window" and option_name("pool_guidance_scale") == (
        "--pool-guidance-scale"
    )
    assert option_name("eval.epochs") == "--epochs" and option_name("source.image_column") == "--image-column"
    assert option_name("source.source") == "SOURCE" and option_name("evaluate") == "evaluation (--no-eval)"
    assert option_name("nopt.kernel") == "--kernel" and option_name("eval.lr") == "EvalConfig.lr"
    assert option_name("torch_compile") == "--compile"
    assert option_name("source.a.b_c") == "--a-b-c"  # only the first part is dropped


@pytest.mark.parametrize(
    "config, window",
    [
        (ConcentrateConfig(ipc=1), 1.0),  # one synthetic image per class: every step
        (ConcentrateConfig(ipc=3), 1.0),  # up to FULL_WINDOW_MAX_N
        (ConcentrateConfig(ipc=8, doping_ratio=0.75), 1.0),  # two synthetic and six real
        (ConcentrateConfig(ipc=4), 0.5),
        (ConcentrateConfig(ipc=1, oversample=4), 0.5),  # NOpt makes four, one is kept
        (ConcentrateConfig(ipc=1, method="herding"), 0.5),  # no NOpt: stored as runs before the rule did
        (ConcentrateConfig(ipc=1, doping_ratio=1.0), 0.5),
        (ConcentrateConfig(ipc=1, nopt=NOptConfig(window=0.25)), 0.25),
    ],
)
def test_the_saved_settings_record_the_window_the_run_uses(config, window):
    assert config.nopt_window == window and config.to_dict()["nopt"]["window"] == window
    assert run_settings(config.to_dict(), "rows")["nopt.window"] == window


def test_a_run_saved_before_the_window_depended_on_n_compares_by_the_window_it_used():
    older = {**run_settings(ConcentrateConfig().to_dict(), "rows"), "nopt.window": 0.5}  # IPC 10, as saved then
    assert first_difference(older, run_settings(ConcentrateConfig().to_dict(), "rows")) is None
    older_ipc1 = {**run_settings(ConcentrateConfig(ipc=1).to_dict(), "rows"), "nopt.window": 0.5}
    now = run_settings(ConcentrateConfig(ipc=1).to_dict(), "rows")
    assert first_difference(older_ipc1, now) == ("--nopt-window", 0.5, 1.0)  # its images would differ now
    kept = ConcentrateConfig(ipc=1, nopt=NOptConfig(window=0.5)).to_dict()
    assert first_difference(older_ipc1, run_settings(kept, "rows")) is None  # --nopt-window 0.5 keeps that set


def test_first_difference_counts_a_missing_setting_as_its_default():
    now = run_settings(ConcentrateConfig(ipc=3).to_dict(), "rows")
    assert first_difference(now, now) is None
    older = {k: v for k, v in now.items() if k != "nopt.features"}  # saved by a version without that option
    assert first_difference(older, now) is None
    assert first_difference(older, {**now, "nopt.features": "ensemble"}) == ("--nopt-features", "random", "ensemble")
    assert first_difference(now, older) is None  # missing on either side
    saved = {**now, "ipc": 2, "steps": 30}
    assert first_difference(saved, now) == ("--ipc", 2, 3)  # the first in sorted order
    assert first_difference({**now, "source.classes": ["a"]}, now) == ("--classes", ["a"], None)
    skipped = run_settings(ConcentrateConfig(ipc=3, evaluate=False).to_dict(), "set")
    quick = run_settings(ConcentrateConfig(ipc=3, eval=EvalConfig(runs=1, epochs=1)).to_dict(), "set")
    assert first_difference(skipped, quick) == ("evaluation (--no-eval)", False, True)  # not --epochs (300, 1)
    assert first_difference(quick, skipped) == ("evaluation (--no-eval)", True, False)


def test_is_commit_sha_takes_only_a_full_lowercase_sha():
    assert is_commit_sha("0123456789abcdef" * 2 + "01234567")  # 40 hex digits
    assert not is_commit_sha("0123456789abcdef" * 2 + "0123456")  # 39: an abbreviated sha names no commit exactly
    assert not is_commit_sha("0123456789ABCDEF" * 2 + "01234567")  # the Hub and its cache write lowercase
    assert not any(is_commit_sha(revision) for revision in ("main", "v1.0", "", None))
    assert not is_commit_sha("a" * 40 + "\n")  # the whole string, not a prefix


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    "config, named, value, default",
    [
        (ConcentrateConfig(guidance_scale=INF), "--guidance-scale", "inf", " (the default is 2.0)"),
        (ConcentrateConfig(eta=NAN), "--eta", "nan", " (the default is 0.0)"),
        (ConcentrateConfig(pool_guidance_scale=INF), "--pool-guidance-scale", "inf", ""),  # default None
        (ConcentrateConfig(nopt=NOptConfig(lr=INF)), "--nopt-lr", "inf", " (the default is 0.05)"),
        (ConcentrateConfig(nopt=NOptConfig(window=-INF)), "--nopt-window", "-inf", ""),  # default None: by n
        (ConcentrateConfig(eval=EvalConfig(lr=INF)), "EvalConfig.lr", "inf", " (the default is 0.01)"),
        (TeacherConfig(weight_decay=INF), "TeacherConfig.weight_decay", "inf", " (the default is 0.0005)"),
        (PriorTrainConfig(label_dropout=NAN), "--label-dropout", "nan", " (the default is 0.1)"),
        (PriorTrainConfig(ema_power=INF), "PriorTrainConfig.ema_power", "inf", " (the default is 0.75)"),
    ],
)
def test_an_infinite_or_nan_float_is_refused_by_name(config, named, value, default):
    _refused(config, f"{named}={value} must be a finite number{default}.")


def test_a_test_split_that_is_the_training_split_is_refused_where_it_would_be_tested_on():
    same = SourceConfig(test_split="train")
    message = (
        "--test-split='train' is the split the training rows come from (--split train), and the students are never "
        "tested on rows they could have trained on: pass another split."
    )
    _refused(ConcentrateConfig(source=same), message)
    _refused(TeacherConfig(source=same), message)
    ConcentrateConfig(source=same, evaluate=False).validate()  # no evaluation: no test split is read
    ConcentrateConfig(source=SourceConfig(split="validation", test_split="train")).validate()
    assert SourceConfig(split="validation", test_split="train").same_split_message() is None


def test_an_empty_model_is_refused_rather_than_read_as_the_current_folder():
    message = "--model='' is empty; pass a Hub id or a prior folder, or omit it for the shipped prior."
    _refused(ConcentrateConfig(model=""), message)
    _refused(ConcentrateConfig(model="  "), message.replace("''", "'  '"))
