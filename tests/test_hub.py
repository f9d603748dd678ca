"""Publishing on the Hub and evaluating published sets, against a Hub-compatible server started in the session.

No test reaches huggingface.co: `tests/hub_server.py` (`FakeHub`) stands in for the Hub on 127.0.0.1, and the real
`huggingface_hub` and `datasets` clients talk to it over HTTP, through `HfApi(endpoint=...)` in this process and
through `HF_ENDPOINT` in subprocesses (both libraries read it at import time). Xet storage is disabled
(`HF_HUB_DISABLE_XET`), so uploads use the LFS batch API the server implements.
"""

from __future__ import annotations

import email.utils
import functools
import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import datasets
import huggingface_hub
import jsonschema
import numpy as np
import pytest
import yaml
from conftest import CLASS_NAMES, tiny_dataset, write_repo
from hub_server import DROPPED, FakeHub
from huggingface_hub import CommitOperationAdd, HfApi

from dsco_hub import assess, hub, hub_errors, pipeline, results, synthesis, writer
from dsco_hub.config import ConcentrateConfig, EvalConfig, HubConfig, SourceConfig
from dsco_hub.data import load_source
from dsco_hub.errors import HubError, SourceError

TOKEN = "hf_alice_S3CRET_token_0123456789"  # alice's valid token (must never show up in output or files)
BOB = "hf_bob_token_9876543210"
FAST_EVAL = EvalConfig(runs=1, epochs=1, baseline=False)


@pytest.fixture(scope="session")
def server():
    fake = FakeHub({TOKEN: "alice", BOB: "bob"}).start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_hub(server, monkeypatch, tmp_path):
    """The session's fake Hub, with this process's clients isolated from any real login, cache or Xet."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    server.clear_failures()
    server.reset_log()
    yield server
    server.clear_failures()


@pytest.fixture
def waits(fake_hub, monkeypatch):
    """Who waited and how long, on a clock the fake Hub stamps its requests with: no test really sleeps.

    dsco-hub's retries wait through `_Caller.sleep`, huggingface_hub's own retries (`http_backoff`: preupload, LFS)
    through `time.sleep` in `huggingface_hub.utils._http`; both are replaced by a recorder that advances the clock,
    so `fake_hub.requests` shows when each retried call came back and `waits` which library made it wait.
    """
    from huggingface_hub.utils import _http

    now = [1000.0]
    recorded: list[tuple[str, float]] = []

    def sleeper(who: str):
        def sleep(seconds: float) -> None:
            recorded.append((who, seconds))
            now[0] += seconds

        return sleep

    monkeypatch.setattr(fake_hub, "clock", lambda: now[0])
    monkeypatch.setattr(hub, "_Caller", functools.partial(hub._Caller, sleep=sleeper("dsco-hub")))
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=sleeper("huggingface_hub")))
    return recorded


def _calls(fake: FakeHub, method: str, fragment: str) -> list:
    """The requests `method` whose path contains `fragment`, as `(status, at)`."""
    return [(r.status, r.at) for r in fake.requests if r.method == method and fragment in r.path]


def _cfg(fake: FakeHub, **kwargs) -> HubConfig:
    kwargs.setdefault("token", TOKEN)
    kwargs.setdefault("retry_wait", 0.01)
    return HubConfig(endpoint=fake.url, **kwargs)


def _make_set(source: Path, out: Path, ipc: int = 2, evaluate: bool = False) -> Path:
    cfg = ConcentrateConfig(
        source=SourceConfig(source=str(source)),
        out=str(out),
        method="random",
        ipc=ipc,
        evaluate=evaluate,
        eval=EvalConfig(runs=1, epochs=1),
    )
    return pipeline.concentrate(cfg).out


def _env(fake: FakeHub, tmp_path: Path, token: str | None = TOKEN) -> dict:
    """Environment of a subprocess whose clients talk to the fake Hub (HF_ENDPOINT) with a fresh HF_HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_ENDPOINT=fake.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1", OMP_NUM_THREADS="1")
    if token:
        env["HF_TOKEN"] = token
    return env


def _run(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=Path(__file__).parent)


def _yaml(text: str) -> dict:
    return yaml.safe_load(text.split("---")[1])


LOAD_SCRIPT = """
import hashlib, json, sys
import datasets
from huggingface_hub import DatasetCard
out = {}
for name in sys.argv[2:] or [None]:
    ds = datasets.load_dataset(sys.argv[1], name, split="train")
    out[str(name)] = {
        "names": ds.features["label"].names,
        "rows": [
            [r["label"], r["source"], r["source_index"], hashlib.sha256(r["image"].tobytes()).hexdigest()] for r in ds
        ],
    }
out["card"] = DatasetCard.load(sys.argv[1], repo_type="dataset").data.to_dict()
print(json.dumps(out))
"""


def _rows(ds: datasets.Dataset) -> list:
    import hashlib

    return [[r["label"], r["source"], r["source_index"], hashlib.sha256(r["image"].tobytes()).hexdigest()] for r in ds]


# ---------------------------------------------------------------------------------------------------------------------
# Push
# ---------------------------------------------------------------------------------------------------------------------


def test_push_then_load_dataset_through_hf_endpoint(fake_hub, tiny_repo, tmp_path):
    out = _make_set(tiny_repo, tmp_path / "set", evaluate=True)
    result = pipeline.push(out, _cfg(fake_hub))  # no --repo-id: <user>/<source>-<method>-ipc<IPC>
    assert (result.repo_id, result.config_name, result.commits) == ("alice/tiny-random-ipc2", "ipc2", 1)
    assert set(fake_hub.files(result.repo_id)) == {
        ".gitattributes",
        "README.md",
        "ipc2/train-00000-of-00001.parquet",
        "ipc2/samples.png",
        "ipc2/dsco_config.json",
    }

    loaded = _run("-c", LOAD_SCRIPT, result.repo_id, env=_env(fake_hub, tmp_path, token=None))
    assert loaded.returncode == 0, loaded.stderr
    got = json.loads(loaded.stdout.strip().splitlines()[-1])
    local = datasets.load_dataset(str(out), split="train")
    assert got["None"]["names"] == CLASS_NAMES == local.features["label"].names
    assert got["None"]["rows"] == _rows(local)
    local_dsco = _yaml((out / "README.md").read_text())["dsco"]
    assert got["card"]["dsco"] == {"config": "ipc2", **local_dsco}
    assert got["card"]["configs"] == [
        {"config_name": "ipc2", "data_files": [{"split": "train", "path": "ipc2/train-*"}], "default": True}
    ]
    assert got["card"]["license"] == "cc-by-4.0"
    text = fake_hub.read(result.repo_id, "README.md").decode()
    assert 'load_dataset("alice/tiny-random-ipc2", split="train")' in text and "](ipc2/samples.png)" in text
    assert "Tiny et al. 2026." in text  # the source citation carried over

    again = pipeline.push(out, _cfg(fake_hub))  # nothing changed: nothing uploaded, no commit
    assert again.commits == 0 and again.uploaded == [] and len(again.skipped) == 3


def test_429_then_success_is_retried_honouring_retry_after(fake_hub, waits, tiny_repo, tmp_path):
    out = _make_set(tiny_repo, tmp_path / "set")
    fake_hub.fail("POST", r"/api/datasets/alice/retry-set/commit/", 429, headers={"Retry-After": "7"})
    result = pipeline.push(out, _cfg(fake_hub, repo_id="alice/retry-set", private=True))
    # the commit, and only it, was sent again, 7 s (as asked, not the 0.01 s backoff) after the 429
    (first, at_429), (second, at_200) = _calls(fake_hub, "POST", "/commit/")
    assert (first, second) == (429, 200) and at_200 - at_429 == 7.0
    assert fake_hub.requests[-1].path.endswith("/commit/main")  # nothing else was called after the retried commit
    assert waits == [("dsco-hub", 7.0)]  # dsco-hub waited; huggingface_hub does not retry commits itself
    assert result.commits == 1 and fake_hub.repos["alice/retry-set"].private
    assert HfApi(endpoint=fake_hub.url).repo_exists("alice/retry-set", repo_type="dataset") is False  # private


def test_retry_after_as_an_http_date(fake_hub, waits, tiny_repo, tmp_path):
    out = _make_set(tiny_repo, tmp_path / "set")
    when = email.utils.formatdate(time.time() + 120, usegmt=True)  # "Fri, 04 Dec 2026 22:00:00 GMT"
    fake_hub.fail("POST", r"/api/datasets/alice/dated/commit/", 503, headers={"Retry-After": when})
    pipeline.push(out, _cfg(fake_hub, repo_id="alice/dated"))
    assert [status for status, _ in _calls(fake_hub, "POST", "/commit/")] == [503, 200]
    [(who, seconds)] = waits
    assert who == "dsco-hub" and 110 < seconds <= 120  # the date, less the time already gone (whole seconds)

    fake_hub.reset_log()  # a date in the past: retried at once
    past = email.utils.formatdate(time.time() - 3600, usegmt=True)
    fake_hub.fail("POST", r"/api/datasets/alice/dated-past/commit/", 503, headers={"Retry-After": past})
    pipeline.push(out, _cfg(fake_hub, repo_id="alice/dated-past"))
    assert waits[1:] == [("dsco-hub", 0.0)]

    # a date beyond --max-wait stops the push in one line, without waiting
    far = email.utils.formatdate(time.time() + 7200, usegmt=True)
    fake_hub.fail("POST", r"/api/datasets/alice/dated-far/commit/", 429, headers={"Retry-After": far})
    with pytest.raises(HubError) as err:
        pipeline.push(out, _cfg(fake_hub, repo_id="alice/dated-far"))
    assert str(err.value).startswith("the Hub asks to wait 7") and "rerun the same command later" in str(err.value)
    assert "\n" not in str(err.value) and len(waits) == 2


def test_backoff_doubles_at_each_retry_until_max_retries(fake_hub, waits, tiny_repo, tmp_path):
    out = _make_set(tiny_repo, tmp_path / "set")
    fake_hub.fail("POST", r"/api/datasets/alice/backoff/commit/", 500, times=3)
    pipeline.push(out, _cfg(fake_hub, repo_id="alice/backoff", retry_wait=0.5, max_retries=3))
    commits = _calls(fake_hub, "POST", "/commit/")
    assert [status for status, _ in commits] == [500, 500, 500, 200]
    assert [b - a for (_, a), (_, b) in zip(commits, commits[1:])] == [0.5, 1.0, 2.0]
    assert waits == [("dsco-hub", 0.5), ("dsco-hub", 1.0), ("dsco-hub", 2.0)]

    fake_hub.reset_log()  # one failure more than the retries: a one-line error naming the attempts
    fake_hub.fail("POST", r"/api/datasets/alice/backoff-out/commit/", 500, times=4)
    with pytest.raises(HubError) as err:
        pipeline.push(out, _cfg(fake_hub, repo_id="alice/backoff-out", retry_wait=0.5, max_retries=3))
    assert str(err.value) == (
        "the Hub failed while uploading to datasets/alice/backoff-out (HTTP 500, 4 attempts); rerun the same "
        "command: it uploads only what is missing."
    )
    assert [status for status, _ in _calls(fake_hub, "POST", "/commit/")] == [500] * 4


@pytest.mark.parametrize(
    "name, method, route",
    [
        ("preupload", "POST", "/api/datasets/alice/retry-preupload/preupload/"),
        ("lfs-batch", "POST", "/datasets/alice/retry-lfs-batch.git/info/lfs/objects/batch"),
        ("lfs-put", "PUT", "/lfs-upload/alice/retry-lfs-put/"),
    ],
)
def test_a_429_on_preupload_or_lfs_is_retried_by_huggingface_hub(
    fake_hub, waits, tiny_repo, tmp_path, name, method, route
):
    out = _make_set(tiny_repo, tmp_path / "set")
    fake_hub.fail(method, re.escape(route), 429, headers={"Retry-After": "3"})
    result = pipeline.push(out, _cfg(fake_hub, repo_id=f"alice/retry-{name}"))
    [failed] = [r for r in fake_hub.requests if r.status == 429]
    again = [r for r in fake_hub.requests if (r.method, r.path) == (failed.method, failed.path)]  # the same object
    assert failed.path.startswith(route) and [r.status for r in again] == [429, 200]
    assert again[1].at - failed.at == 4.0
    assert waits == [("huggingface_hub", 4.0)]  # its http_backoff waits Retry-After + 1 s; dsco-hub never waited
    assert result.commits == 1 and "README.md" in fake_hub.files(result.repo_id)


def test_calls_huggingface_hub_retries_are_not_retried_again_and_a_retried_commit_uploads_nothing_twice(
    fake_hub, waits, tiny_repo, tmp_path
):
    out = _make_set(tiny_repo, tmp_path / "set")
    # a preupload failing every time: huggingface_hub's http_backoff tries it 1 + 5 times, dsco-hub adds none
    fake_hub.fail("POST", r"/api/datasets/alice/no-double/preupload/", 500, times=100)
    with pytest.raises(HubError) as err:
        pipeline.push(out, _cfg(fake_hub, repo_id="alice/no-double", max_retries=3))
    assert str(err.value) == (
        "the Hub failed while uploading to datasets/alice/no-double (HTTP 500, after huggingface_hub's retries); "
        "rerun the same command: it uploads only what is missing."
    )
    assert [status for status, _ in _calls(fake_hub, "POST", "/preupload/")] == [500] * 6
    assert {who for who, _ in waits} == {"huggingface_hub"} and fake_hub.commits == []
    fake_hub.clear_failures()  # the same for the listing of the repo's tree (paginated: huggingface_hub retries it)
    fake_hub.reset_log()
    waits.clear()
    fake_hub.fail("GET", r"/api/datasets/alice/no-double/tree/", 500, times=100)
    with pytest.raises(HubError, match="while listing datasets/alice/no-double"):
        pipeline.push(out, _cfg(fake_hub, repo_id="alice/no-double", max_retries=3))
    assert [status for status, _ in _calls(fake_hub, "GET", "/tree/")] == [500] * 6
    assert {who for who, _ in waits} == {"huggingface_hub"}

    fake_hub.clear_failures()  # a commit answered 500 once: only the commit is sent again, no file is uploaded twice
    fake_hub.reset_log()
    waits.clear()
    fake_hub.fail("POST", r"/api/datasets/alice/commit-again/commit/", 500)
    pipeline.push(out, _cfg(fake_hub, repo_id="alice/commit-again"))
    assert [status for status, _ in _calls(fake_hub, "POST", "/commit/")] == [500, 200]
    uploads = [r.path for r in fake_hub.requests if r.method == "PUT" and "/lfs-upload/" in r.path]
    assert len(_calls(fake_hub, "POST", "/preupload/")) == 1 and uploads and len(set(uploads)) == len(uploads)
    assert waits == [("dsco-hub", 0.01)]


def test_connection_dropped_during_upload_is_retried_then_reported(fake_hub, waits, tiny_repo, tmp_path):
    out = _make_set(tiny_repo, tmp_path / "set")
    fake_hub.drop("POST", r"/api/datasets/alice/dropped/commit/")
    result = pipeline.push(out, _cfg(fake_hub, repo_id="alice/dropped"))
    assert [status for status, _ in _calls(fake_hub, "POST", "/commit/")] == [DROPPED, 200]
    assert waits == [("dsco-hub", 0.01)] and result.commits == 1
    assert "README.md" in fake_hub.files("alice/dropped")

    fake_hub.reset_log()  # the LFS upload's connection dropped: huggingface_hub sends the object again
    fake_hub.drop("PUT", r"/lfs-upload/alice/dropped-lfs/")
    pipeline.push(out, _cfg(fake_hub, repo_id="alice/dropped-lfs"))
    assert [status for status, _ in _calls(fake_hub, "PUT", "/lfs-upload/")][:2] == [DROPPED, 200]

    fake_hub.reset_log()  # dropped every time: one line naming the endpoint and the attempts, never the token
    fake_hub.drop("POST", r"/api/datasets/alice/unreachable/commit/", times=100)
    with pytest.raises(HubError) as err:
        pipeline.push(out, _cfg(fake_hub, repo_id="alice/unreachable", max_retries=2))
    message = str(err.value)
    assert message.startswith(f"cannot reach {fake_hub.url} while uploading to datasets/alice/unreachable (")
    assert message.endswith(", 3 attempts); check your connection and --endpoint / HF_ENDPOINT, then rerun.")
    assert "\n" not in message and TOKEN not in message
    assert [status for status, _ in _calls(fake_hub, "POST", "/commit/")] == [DROPPED] * 3


def _reshard(out: Path, max_shard_bytes: int | None) -> list[str]:
    """Rewrite the set's parquet shards (`max_shard_bytes=1000`: several, as a large set has); their names."""
    ds = datasets.load_dataset(str(out), split="train")
    for shard in (out / "data").glob("*.parquet"):
        shard.unlink()
    writer.write_parquet(ds, out, **({} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}))
    return sorted(p.name for p in (out / "data").glob("*.parquet"))


def test_500_mid_upload_then_rerun_uploads_only_what_is_missing(fake_hub, tiny_repo, tmp_path):
    out = _make_set(tiny_repo, tmp_path / "set", ipc=3)
    shards = _reshard(out, 1000)
    assert len(shards) >= 3
    cfg = _cfg(fake_hub, repo_id="alice/resume-set", commit_max_files=2, max_retries=1)

    fake_hub.fail("POST", r"/api/datasets/alice/resume-set/commit/", 500, after=1, times=2)  # 2nd commit fails
    with pytest.raises(HubError, match=r"HTTP 500, 2 attempts\); rerun the same command") as failed:
        pipeline.push(out, cfg)
    assert "\n" not in str(failed.value)
    committed = {p for p in fake_hub.files("alice/resume-set") if p.startswith("ipc3/")}
    assert committed == {f"ipc3/{shards[0]}", f"ipc3/{shards[1]}"}  # the first commit landed
    assert "README.md" not in fake_hub.files("alice/resume-set")  # no card for a set half uploaded
    failed_uploads = set(fake_hub.lfs_uploads)

    fake_hub.clear_failures()
    fake_hub.reset_log()
    result = pipeline.push(out, cfg)
    assert set(result.skipped) == committed
    rerun_paths = [p for c in fake_hub.commits for p in c["paths"]]
    expected = [f"ipc3/{s}" for s in shards[2:]] + ["ipc3/samples.png", "ipc3/dsco_config.json", "README.md"]
    assert sorted(rerun_paths) == sorted(expected)  # only what was missing
    assert fake_hub.commits[-1]["paths"][-1] == "README.md"  # the card last, in the last commit only
    assert all("README.md" not in c["paths"] for c in fake_hub.commits[:-1])
    assert not failed_uploads & set(fake_hub.lfs_uploads)  # LFS objects sent by the failed run are not sent again
    on_hub = datasets.Dataset.from_parquet(
        [str(fake_hub_file) for fake_hub_file in _download_all(fake_hub, "alice/resume-set", "ipc3/", tmp_path)]
    )
    assert len(on_hub) == 9


def test_commits_hold_at_most_50_files_and_5_gib_by_default(tmp_path):
    cfg = HubConfig()
    assert (cfg.commit_max_files, cfg.commit_max_bytes) == (50, 5 << 30)
    small = []
    for i in range(120):
        (tmp_path / f"s{i:03d}").write_bytes(b"x" * 10)
        small.append((f"ipc1/s{i:03d}", tmp_path / f"s{i:03d}"))
    batches = hub._batches(small, cfg.commit_max_files, cfg.commit_max_bytes)
    assert [len(b) for b in batches] == [50, 50, 20] and [i for b in batches for i in b] == small  # order kept
    big = []
    for i in range(5):  # sparse files: 2 GiB each on paper, nothing on disk
        with open(tmp_path / f"b{i}", "wb") as f:
            f.truncate(2 << 30)
        big.append((f"ipc1/b{i}", tmp_path / f"b{i}"))
    batches = hub._batches(big, cfg.commit_max_files, cfg.commit_max_bytes)
    assert [[path for path, _ in b] for b in batches] == [["ipc1/b0", "ipc1/b1"], ["ipc1/b2", "ipc1/b3"], ["ipc1/b4"]]
    alone = hub._batches(big[:2], 50, 1 << 30)  # a file larger than the cap goes alone, never split or dropped
    assert [len(b) for b in alone] == [1, 1]


def test_push_splits_commits_by_file_and_byte_caps_with_the_card_last(fake_hub, tiny_repo, tmp_path):
    out = _make_set(tiny_repo, tmp_path / "set", ipc=3)
    shards = _reshard(out, 1000)
    sizes = {f"ipc3/{name}": (out / "data" / name).stat().st_size for name in shards}
    sizes.update({f"ipc3/{n}": (out / n).stat().st_size for n in ("samples.png", "dsco_config.json")})
    cap = 2 * max(sizes.values()) + 1  # at least two files fit in a commit
    result = pipeline.push(out, _cfg(fake_hub, repo_id="alice/capped", commit_max_files=3, commit_max_bytes=cap))
    commits = [c["paths"] for c in fake_hub.commits]
    assert result.commits == len(commits) >= 2
    readme = len(fake_hub.read("alice/capped", "README.md"))
    for paths in commits:
        assert len(paths) <= 3
        total = sum(sizes.get(p, readme) for p in paths)
        assert total <= cap or len(paths) == 1, (paths, total, cap)
    assert [p for paths in commits for p in paths if p != "README.md"] == [p for p, _ in hub._local_files(out, "ipc3")]
    assert commits[-1][-1] == "README.md" and all("README.md" not in paths for paths in commits[:-1])


def test_the_card_gets_a_commit_of_its_own_when_the_last_batch_is_full(fake_hub, tiny_repo, tmp_path):
    out = _make_set(tiny_repo, tmp_path / "set", ipc=3)
    files = [path for path, _ in hub._local_files(out, "ipc3")]
    result = pipeline.push(out, _cfg(fake_hub, repo_id="alice/full", commit_max_files=len(files)))
    # the data fill the cap exactly, so the card cannot join them: a second commit, never one of cap + 1 files
    assert [c["paths"] for c in fake_hub.commits] == [files, ["README.md"]]
    assert result.commits == 2 and result.uploaded == [*files, "README.md"]


def test_a_pull_request_pushed_in_several_commits_is_one_pull_request(fake_hub, tiny_repo, tmp_path):
    out = _make_set(tiny_repo, tmp_path / "set", ipc=3)
    files = [path for path, _ in hub._local_files(out, "ipc3")]
    HfApi(endpoint=fake_hub.url, token=TOKEN).create_repo("alice/one-pr", repo_type="dataset")
    main = fake_hub.repos["alice/one-pr"].refs["main"]
    result = pipeline.push(out, _cfg(fake_hub, repo_id="alice/one-pr", create_pr=True, commit_max_files=1))
    # the first commit opens the pull request; the others go to its ref, never opening another
    assert [(c["revision"], c["create_pr"]) for c in fake_hub.commits] == [("main", True)] + [
        ("refs/pr/1", False)
    ] * len(files)
    assert [p for c in fake_hub.commits for p in c["paths"]] == [*files, "README.md"]
    assert list(fake_hub.repos["alice/one-pr"].discussions) == [1]
    assert (result.revision, result.commits) == ("refs/pr/1", len(files) + 1)
    assert result.pr_url.endswith("/datasets/alice/one-pr/discussions/1")
    assert fake_hub.repos["alice/one-pr"].refs["main"] == main  # main untouched
    assert sorted(fake_hub.files("alice/one-pr", "refs/pr/1")) == sorted([*files, "README.md", ".gitattributes"])


def test_a_push_with_nothing_to_upload_names_the_failed_read_of_the_head(fake_hub, tiny_repo, tmp_path):
    out = _make_set(tiny_repo, tmp_path / "set")
    cfg = _cfg(fake_hub, repo_id="alice/same", max_retries=0)
    first = pipeline.push(out, cfg)
    assert pipeline.push(out, cfg).commit == first.commit  # nothing to upload: the head is read
    fake_hub.fail("GET", r"/api/datasets/alice/same/revision/main", 500)
    with pytest.raises(HubError) as err:
        pipeline.push(out, cfg)
    assert str(err.value).startswith("the Hub failed while reading datasets/alice/same (HTTP 500, 1 attempts);")
    assert "\n" not in str(err.value)


def test_pushing_an_ipc_again_deletes_its_stale_shards_and_nothing_else(fake_hub, tiny_repo, tmp_path):
    cfg = _cfg(fake_hub, repo_id="alice/restale")
    pipeline.push(_make_set(tiny_repo, tmp_path / "ipc2", ipc=2), cfg)
    out = _make_set(tiny_repo, tmp_path / "ipc3", ipc=3)
    old = _reshard(out, 1000)
    pipeline.push(out, cfg)
    other = {p: f.blob_id for p, f in fake_hub.files("alice/restale").items() if p.startswith("ipc2/")}
    new = _reshard(out, None)  # the same rows in one shard: the old shard names are all stale
    assert len(old) >= 3 and new == ["train-00000-of-00001.parquet"]
    fake_hub.reset_log()
    result = pipeline.push(out, cfg)
    assert result.deleted == sorted(f"ipc3/{name}" for name in old)
    # one commit: the new shard, then the deletions (the card is unchanged: same rows, so it is not sent again)
    assert [c["paths"] for c in fake_hub.commits] == [
        ["ipc3/train-00000-of-00001.parquet", *(f"-ipc3/{name}" for name in old)]
    ]
    files = fake_hub.files("alice/restale")
    assert sorted(p for p in files if p.startswith("ipc3/")) == [
        "ipc3/dsco_config.json",
        "ipc3/samples.png",
        "ipc3/train-00000-of-00001.parquet",
    ]
    assert {p: f.blob_id for p, f in files.items() if p.startswith("ipc2/")} == other  # the other IPC untouched


def _download_all(fake: FakeHub, repo_id: str, prefix: str, tmp_path: Path) -> list[Path]:
    paths = []
    for name in sorted(fake.files(repo_id)):
        if name.startswith(prefix) and name.endswith(".parquet"):
            path = tmp_path / "downloaded" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(fake.read(repo_id, name))
            paths.append(path)
    return paths


def test_401_fails_with_a_clear_message_and_the_token_appears_nowhere(fake_hub, tiny_repo, tmp_path):
    out = _make_set(tiny_repo, tmp_path / "set")
    bad = "hf_not_a_valid_S3CRET_0000"
    env = _env(fake_hub, tmp_path, token=None)
    result = _run("-m", "dsco_hub", "push", str(out), "--repo-id", "alice/denied", "--token", bad, env=env)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("[dsco-hub] ")]
    assert len(lines) == 1, result.stderr
    message = " ".join(result.stderr.split())
    assert "rejected the token (HTTP 401)" in message and "datasets/alice/denied" in message
    assert "hf auth login" in message and "Traceback" not in message
    assert bad not in result.stdout + result.stderr

    # an injected 401 on a valid token, in process: the same message, never the token
    fake_hub.fail("POST", r"/api/repos/create", 401)
    with pytest.raises(HubError) as err:
        pipeline.push(out, _cfg(fake_hub, repo_id="alice/denied"))
    assert "rejected the token (HTTP 401)" in str(err.value) and TOKEN not in str(err.value)


def test_push_refuses_bad_input_before_any_work(fake_hub, tiny_repo, tmp_path):
    out = _make_set(tiny_repo, tmp_path / "set")
    with pytest.raises(HubError, match="no Hugging Face token found.*hf auth login.*HF_TOKEN"):
        pipeline.push(out, _cfg(fake_hub, token=None))
    with pytest.raises(HubError, match=r"--repo-id='alice/a/b' is not a valid dataset repo id"):
        pipeline.push(out, _cfg(fake_hub, repo_id="alice/a/b"))
    with pytest.raises(HubError, match=r"no write access to datasets/bob/theirs \(HTTP 403\)"):
        pipeline.push(out, _cfg(fake_hub, repo_id="bob/theirs"))
    assert fake_hub.commits == [] and "bob/theirs" not in fake_hub.repos


@pytest.mark.parametrize(
    "repo_id, ok",
    [("alice/set", True), ("set-1.2_x", True), ("a/b/c", False), ("alice/x--y", False), ("alice/-x", False)],
)
def test_repo_id_format(repo_id, ok):
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if ok:
        assert hub.check_repo_id(repo_id) is None and hub.is_hub_ref(repo_id)
        validate_repo_id(repo_id)  # what dsco-hub accepts, huggingface_hub accepts too
        assert hub.parse_set_ref(f"{repo_id}@dev") == (repo_id, "dev")
    else:
        with pytest.raises(HubError) as err:
            hub.check_repo_id(repo_id)
        assert str(err.value).startswith(f"--repo-id={repo_id!r} is not a valid dataset repo id; use USER/NAME")
        assert "\n" not in str(err.value)
        with pytest.raises(HFValidationError):  # ... and refused before huggingface_hub would refuse it
            validate_repo_id(repo_id)


def test_default_repo_id_from_source_method_and_ipc():
    dsco = {"source": {"id": "dsco-hub/fashion-mnist-subset (embedded)"}, "method": "herding", "ipc": 50}
    assert hub.default_repo_id("alice", dsco) == "alice/fashion-mnist-subset-herding-ipc50"
    dsco = {"source": {"id": "ILSVRC/imagenet-1k"}, "method": "random", "ipc": 10}
    assert hub.default_repo_id("alice", dsco) == "alice/imagenet-1k-random-ipc10"


def test_second_ipc_adds_a_config_without_breaking_the_first(fake_hub, tiny_repo, tmp_path):
    cfg = _cfg(fake_hub, repo_id="alice/multi")
    first = pipeline.push(_make_set(tiny_repo, tmp_path / "ipc2", ipc=2), cfg)
    second = pipeline.push(_make_set(tiny_repo, tmp_path / "ipc3", ipc=3), cfg)
    assert (first.config_name, second.config_name) == ("ipc2", "ipc3")
    meta = _yaml(fake_hub.read("alice/multi", "README.md").decode())
    assert meta["configs"] == [
        {"config_name": "ipc2", "data_files": [{"split": "train", "path": "ipc2/train-*"}], "default": True},
        {"config_name": "ipc3", "data_files": [{"split": "train", "path": "ipc3/train-*"}]},
    ]
    assert [i["config_name"] for i in meta["dataset_info"]] == ["ipc2", "ipc3"]
    assert (meta["dsco"]["config"], meta["dsco"]["ipc"], meta["dsco_configs"]["ipc3"]["ipc"]) == ("ipc2", 2, 3)
    assert {"ipc-2", "ipc-3"} <= set(meta["tags"])
    assert "## Configurations" in fake_hub.read("alice/multi", "README.md").decode()

    loaded = _run("-c", LOAD_SCRIPT, "alice/multi", "ipc3", env=_env(fake_hub, tmp_path, token=None))
    assert loaded.returncode == 0, loaded.stderr
    got = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert len(got["ipc3"]["rows"]) == 9
    plain = _run("-c", LOAD_SCRIPT, "alice/multi", env=_env(fake_hub, tmp_path, token=None))
    assert plain.returncode == 0, plain.stderr
    assert len(json.loads(plain.stdout.strip().splitlines()[-1])["None"]["rows"]) == 6  # still the first IPC

    again = pipeline.push(tmp_path / "ipc2", cfg)  # re-pushing the first IPC changes nothing
    assert again.commits == 0


def test_push_to_a_branch_and_as_a_pull_request(fake_hub, tiny_repo, tmp_path):
    out = _make_set(tiny_repo, tmp_path / "set")
    branch = pipeline.push(out, _cfg(fake_hub, repo_id="alice/branches", revision="dev"))
    assert branch.revision == "dev" and "ipc2/samples.png" in fake_hub.files("alice/branches", "dev")
    assert set(fake_hub.files("alice/branches", "main")) == {".gitattributes"}
    preuploads = [(r.path, r.query) for r in fake_hub.requests if "/preupload/" in r.path]
    assert preuploads == [("/api/datasets/alice/branches/preupload/dev", "")]  # upload modes asked of the branch
    HfApi(endpoint=fake_hub.url, token=TOKEN).create_commit(  # a nested stray file of the config, on dev only
        "alice/branches",
        [CommitOperationAdd("ipc2/old/stray.bin", b"stray")],
        commit_message="stray",
        repo_type="dataset",
        revision="dev",
    )
    fake_hub.reset_log()
    again = pipeline.push(out, _cfg(fake_hub, repo_id="alice/branches", revision="dev"))  # the tree of dev is listed
    assert (again.commits, len(again.skipped), again.deleted, again.uploaded) == (1, 3, ["ipc2/old/stray.bin"], [])
    with pytest.raises(HubError) as err:  # dev's card was read: unchanged; a missing ref is named
        pipeline.push(out, _cfg(fake_hub, repo_id="alice/branches", revision="refs/pr/9"))
    assert str(err.value).startswith("revision 'refs/pr/9' does not exist in datasets/alice/branches;")
    fake_hub.reset_log()
    proposed = pipeline.push(out, _cfg(fake_hub, repo_id="alice/branches", create_pr=True, commit_message="Add ipc2"))
    preuploads = [(r.path, r.query) for r in fake_hub.requests if "/preupload/" in r.path]
    assert preuploads == [("/api/datasets/alice/branches/preupload/main", "create_pr=1")]  # ... and for a PR
    assert proposed.pr_url.endswith("/datasets/alice/branches/discussions/1") and proposed.revision == "refs/pr/1"
    assert "README.md" in fake_hub.files("alice/branches", "refs/pr/1")
    assert fake_hub.repos["alice/branches"].discussions[1]["title"] == "Add ipc2"
    fake_hub.reset_log()
    again = pipeline.push(out, _cfg(fake_hub, repo_id="alice/branches", revision="refs/pr/1"))  # a ref: no branch
    assert again.commits == 0 and not _calls(fake_hub, "POST", "/branch/")
    fake_hub.fail("POST", r"/api/datasets/alice/branches/branch/", 500)
    with pytest.raises(HubError) as err:
        pipeline.push(out, _cfg(fake_hub, repo_id="alice/branches", revision="dev2", max_retries=0))
    assert str(err.value).startswith(
        "the Hub failed while creating branch dev2 in datasets/alice/branches (HTTP 500, 1 attempts);"
    )


def test_gated_non_commercial_source_terms_carry_over(fake_hub, tiny_repo, tmp_path):
    api = HfApi(endpoint=fake_hub.url, token=TOKEN)
    api.create_repo("alice/gated-source", repo_type="dataset")
    source_card = (
        "---\nlicense: other\nlicense_name: imagenet-terms\nlicense_link: https://image-net.org/download\n"
        "extra_gated_prompt: Non-commercial research use only.\n---\n# source\n"
    )
    api.create_commit(
        "alice/gated-source",
        [CommitOperationAdd("README.md", source_card.encode())],
        commit_message="card",
        repo_type="dataset",
    )
    api.update_repo_settings("alice/gated-source", gated="manual", repo_type="dataset")
    out = _make_set(tiny_repo, tmp_path / "set")
    text = (out / "README.md").read_text()
    meta = _yaml(text)
    meta["dsco"]["source"].update(id="alice/gated-source", is_hub=True)  # as if concentrated from the Hub source
    (out / "README.md").write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---" + text.split("---", 2)[2])

    pipeline.push(out, _cfg(fake_hub, repo_id="alice/gated-set"))
    pushed = _yaml(fake_hub.read("alice/gated-set", "README.md").decode())
    assert (pushed["license"], pushed["license_name"]) == ("other", "imagenet-terms")
    assert pushed["extra_gated_prompt"] == "Non-commercial research use only."
    assert fake_hub.repos["alice/gated-set"].gated == "manual"
    # the repo is gated right after its creation: when gating fails, the failure is named and no image was uploaded
    fake_hub.fail("PUT", r"/api/datasets/alice/gated-copy/settings", 500)
    with pytest.raises(HubError) as err:
        pipeline.push(out, _cfg(fake_hub, repo_id="alice/gated-copy", max_retries=0))
    assert str(err.value).startswith("the Hub failed while gating datasets/alice/gated-copy (HTTP 500, 1 attempts);")
    assert [c for c in fake_hub.commits if c["repo"] == "alice/gated-copy"] == []
    assert set(fake_hub.files("alice/gated-copy")) <= {".gitattributes"}
    fake_hub.clear_failures()
    # a pull request cannot gate the repo: refused on a public, ungated repo, whose refs anyone can read
    api.create_repo("alice/public-target", repo_type="dataset")
    with pytest.raises(HubError) as err:
        pipeline.push(out, _cfg(fake_hub, repo_id="alice/public-target", create_pr=True))
    assert str(err.value) == (
        "refusing to open a pull request with images of the gated source alice/gated-source on "
        "datasets/alice/public-target, which is public and not gated; ask its owner to gate it, or push to a repo "
        "of yours without --create-pr."
    )
    assert [c for c in fake_hub.commits if c["repo"] == "alice/public-target"] == []
    api.update_repo_settings("alice/public-target", gated="auto", repo_type="dataset")  # gated by its owner: opened
    proposed = pipeline.push(out, _cfg(fake_hub, repo_id="alice/public-target", create_pr=True))
    assert proposed.revision == "refs/pr/1" and fake_hub.repos["alice/public-target"].gated == "auto"
    api.create_repo("alice/private-target", repo_type="dataset", private=True)  # private: its refs are not public
    assert pipeline.push(out, _cfg(fake_hub, repo_id="alice/private-target", create_pr=True)).revision == "refs/pr/1"
    # a repo the pull request creates is this user's: gated before the pull request is opened
    proposed = pipeline.push(out, _cfg(fake_hub, repo_id="alice/new-target", create_pr=True))
    assert proposed.revision == "refs/pr/1" and fake_hub.repos["alice/new-target"].gated == "manual"
    fake_hub.fail("GET", r"/api/datasets/alice/unread-target", 500)  # a failed read is named; nothing is created
    with pytest.raises(HubError) as err:
        pipeline.push(out, _cfg(fake_hub, repo_id="alice/unread-target", create_pr=True, max_retries=0))
    assert str(err.value).startswith(
        "the Hub failed while reading the access settings of datasets/alice/unread-target (HTTP 500, 1 attempts);"
    )
    assert "alice/unread-target" not in fake_hub.repos
    fake_hub.clear_failures()
    fake_hub.fail("GET", r"/api/datasets/alice/gated-source", 500, times=2)  # the terms are read before anything
    for repo_id in ("alice/gated-set", "alice/gated-new"):
        with pytest.raises(HubError) as err:
            pipeline.push(out, _cfg(fake_hub, repo_id=repo_id, max_retries=0))
        assert str(err.value).startswith(
            "the Hub failed while reading the licence and gating of the source datasets/alice/gated-source (HTTP 500, "
            "1 attempts);"
        )
    assert "alice/gated-new" not in fake_hub.repos  # a failed read creates no repo
    api.create_branch("alice/gated-source", branch="v1", repo_type="dataset")  # terms read at the source's revision
    api.create_commit(
        "alice/gated-source",
        [CommitOperationAdd("README.md", b"---\nlicense: mit\n---\n# source\n")],
        commit_message="relicensed",
        repo_type="dataset",
    )
    meta["dsco"]["source"]["revision"] = "v1"
    (out / "README.md").write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---" + text.split("---", 2)[2])
    pipeline.push(out, _cfg(fake_hub, repo_id="alice/gated-set-v1"))
    pushed = _yaml(fake_hub.read("alice/gated-set-v1", "README.md").decode())
    assert (pushed["license"], pushed["license_name"]) == ("other", "imagenet-terms")
    api.create_repo("alice/cardless-source", repo_type="dataset")  # gated, no card: the prompt names the source
    api.update_repo_settings("alice/cardless-source", gated="auto", repo_type="dataset")
    meta["dsco"]["source"].update(id="alice/cardless-source", revision=None)
    (out / "README.md").write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---" + text.split("---", 2)[2])
    pipeline.push(out, _cfg(fake_hub, repo_id="alice/gated-set-cardless"))
    pushed = _yaml(fake_hub.read("alice/gated-set-cardless", "README.md").decode())
    assert "images of alice/cardless-source, a gated dataset" in pushed["extra_gated_prompt"]
    assert fake_hub.repos["alice/gated-set-cardless"].gated == "auto"


# ---------------------------------------------------------------------------------------------------------------------
# Evaluate published sets
# ---------------------------------------------------------------------------------------------------------------------


def test_evaluate_update_card_create_pr_records_results_and_evaluated_commit(fake_hub, tiny_repo, tmp_path):
    out = _make_set(tiny_repo, tmp_path / "set")
    pushed = pipeline.push(out, _cfg(fake_hub, repo_id="alice/evaluated"))
    main_before = fake_hub.read("alice/evaluated", "README.md")
    env = _env(fake_hub, tmp_path)  # HF_ENDPOINT and HF_TOKEN, as in CI
    args = ["-m", "dsco_hub", "evaluate", "alice/evaluated@main", "--test-dataset", str(tiny_repo)]
    result = _run(*args, "--runs", "1", "--epochs", "1", "--no-baseline", "--update-card", "--create-pr", env=env)
    assert result.returncode == 0, result.stderr
    stdout = " ".join(result.stdout.split())
    assert pushed.commit in stdout and "accuracy" in stdout
    assert "card pull request: " + f"{fake_hub.url}/datasets/alice/evaluated/discussions/1" in stdout
    assert TOKEN not in result.stdout + result.stderr

    discussion = fake_hub.repos["alice/evaluated"].discussions[1]
    assert discussion["isPullRequest"] and discussion["status"] == "open"
    proposed = _yaml(fake_hub.read("alice/evaluated", "README.md", "refs/pr/1").decode())
    evaluation = proposed["dsco"]["eval"]
    assert evaluation["commit"] == pushed.commit  # the evaluated commit
    assert evaluation["result"]["runs"] == 1 and evaluation["test"]["dataset"] == "tiny"
    assert (
        f"{evaluation['result']['accuracy_mean']:.2f} ±"
        in fake_hub.read("alice/evaluated", "README.md", "refs/pr/1").decode()
    )
    assert fake_hub.read("alice/evaluated", "README.md") == main_before  # main untouched until the PR is merged


def test_evaluate_a_set_another_tool_published_adds_an_eval_block(fake_hub, tiny_repo, tmp_path):
    folder = write_repo(tmp_path / "foreign", tiny_dataset(per_class=(3, 3, 3), seed_offset=50))
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# Someone's set\n\nTheir own words.\n")
    api = HfApi(endpoint=fake_hub.url, token=TOKEN)
    api.create_repo("alice/foreign", repo_type="dataset")
    api.upload_folder(repo_id="alice/foreign", folder_path=str(folder), repo_type="dataset")
    cfg = _cfg(fake_hub)
    with pytest.raises(SourceError, match="--test-dataset is needed: alice/foreign records no source"):
        assess.evaluate_set("alice/foreign", SourceConfig(), FAST_EVAL, hub_cfg=cfg)
    block = assess.evaluate_set(
        "alice/foreign", SourceConfig(source=str(tiny_repo)), FAST_EVAL, update_card=True, hub_cfg=cfg
    )
    assert block["result"]["num_train_images"] == 9 and len(block["commit"]) == 40
    text = fake_hub.read("alice/foreign", "README.md").decode()
    meta = _yaml(text)
    assert meta["license"] == "mit" and meta["dsco"]["eval"]["commit"] == block["commit"]
    assert "Their own words." in text and "## dsco-hub evaluation" in text

    assess.evaluate_set(  # a second evaluation replaces the section, it does not add another
        "alice/foreign", SourceConfig(source=str(tiny_repo)), FAST_EVAL, update_card=True, hub_cfg=cfg
    )
    assert fake_hub.read("alice/foreign", "README.md").decode().count("## dsco-hub evaluation") == 1


def test_evaluate_refuses_a_repo_without_image_column(fake_hub, tiny_repo, tmp_path):
    texts = datasets.Dataset.from_dict(
        {"text": ["a", "b", "c"], "label": [0, 1, 2]},
        features=datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=CLASS_NAMES)}
        ),
    )
    path = tmp_path / "texts.parquet"
    texts.to_parquet(str(path))
    api = HfApi(endpoint=fake_hub.url, token=TOKEN)
    api.create_repo("alice/texts", repo_type="dataset")
    api.upload_file(
        path_or_fileobj=str(path),
        path_in_repo="data/train-00000-of-00001.parquet",
        repo_id="alice/texts",
        repo_type="dataset",
    )
    with pytest.raises(SourceError, match=r"alice/texts has no image column \(feature `Image`\); columns: text"):
        assess.evaluate_set("alice/texts", SourceConfig(source=str(tiny_repo)), FAST_EVAL, hub_cfg=_cfg(fake_hub))


def test_evaluate_refuses_a_test_dataset_with_other_classes(fake_hub, tiny_repo, tmp_path):
    pipeline.push(_make_set(tiny_repo, tmp_path / "set"), _cfg(fake_hub, repo_id="alice/classes"))
    other = tiny_dataset(per_class=(2, 2, 2)).cast_column(
        "label", datasets.ClassLabel(names=["circle", "square", "star"])
    )
    test_repo = write_repo(tmp_path / "other-classes", other, other)
    with pytest.raises(SourceError) as err:
        assess.evaluate_set("alice/classes", SourceConfig(source=str(test_repo)), FAST_EVAL, hub_cfg=_cfg(fake_hub))
    message = str(err.value)
    assert "has other classes than the set alice/classes" in message
    assert "only in the set: 'stripe'; only in the test dataset: 'star'" in message


@pytest.mark.parametrize(
    "target, kwargs, expected",
    [
        (
            "alice/missing-set",
            {},
            r"datasets/alice/missing-set does not exist on http://127\.0\.0\.1:\d+ or is private",
        ),
        ("alice/revisions@v9", {}, r"revision 'v9' does not exist in datasets/alice/revisions; its branches: main\."),
        ("alice/revisions", {"set_config": "ipc9"}, r"--set-config='ipc9' is not a config of .*; its configs: ipc2"),
        ("alice/revisions", {"update_card": True}, r"no Hugging Face token found"),  # checked before any training
        ("alice/x--y", {}, r"TARGET='alice/x--y' is not a valid dataset repo id"),
    ],
)
def test_evaluate_bad_repo_revision_or_config(fake_hub, tiny_repo, tmp_path, monkeypatch, target, kwargs, expected):
    if "alice/revisions" not in fake_hub.repos:
        pipeline.push(_make_set(tiny_repo, tmp_path / "set"), _cfg(fake_hub, repo_id="alice/revisions"))
    monkeypatch.setattr(assess, "eval_block", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(HubError, match=expected) as err:
        assess.evaluate_set(
            target, SourceConfig(source=str(tiny_repo)), FAST_EVAL, hub_cfg=_cfg(fake_hub, token=None), **kwargs
        )
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("form", ["--token VALUE", "--token=VALUE"])
def test_concentrate_push_from_the_command_line_keeps_the_token_out(fake_hub, tiny_repo, tmp_path, form):
    out = tmp_path / "cli-set"
    env = _env(fake_hub, tmp_path, token=None)
    repo_id = "alice/from-cli" + ("-equals" if "=" in form else "")
    token_args = ["--token", TOKEN] if form == "--token VALUE" else [f"--token={TOKEN}"]
    args = ["concentrate", str(tiny_repo), "--method", "random", "--ipc", "2", "--out", str(out), "--no-eval"]
    result = _run("-m", "dsco_hub", *args, "--push", "--repo-id", repo_id, *token_args, env=env)
    assert result.returncode == 0, result.stderr
    assert repo_id in result.stdout and TOKEN not in result.stdout + result.stderr
    for name, content in [(n, fake_hub.read(repo_id, n)) for n in fake_hub.files(repo_id)]:
        assert TOKEN.encode() not in content, name
    for path in out.rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path
    recorded = json.loads((out / "dsco_config.json").read_text())
    masked = "--token REDACTED" if form == "--token VALUE" else "--token=REDACTED"
    assert recorded["command"].endswith(f"--repo-id {repo_id} {masked}") and "token" not in recorded["push"]


def test_concentrate_push_without_token_is_refused_before_any_work(fake_hub, tiny_repo, tmp_path, monkeypatch):
    monkeypatch.setattr(synthesis, "load_source", lambda *a, **k: pytest.fail("loaded the source before refusing"))
    cfg = ConcentrateConfig(
        source=SourceConfig(source=str(tiny_repo)), out=str(tmp_path / "never"), push=_cfg(fake_hub, token=None)
    )
    with pytest.raises(HubError, match="no Hugging Face token found"):
        pipeline.concentrate(cfg)
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------------------------------------------------------------
# hub_errors: the one-line messages and the retries, without a server
# ---------------------------------------------------------------------------------------------------------------------


def _http_error(status: int, cls=None, headers: dict | None = None, server_message: str | None = None, text="boom"):
    """An error of `huggingface_hub` (`cls`, default `HfHubHTTPError`) for a response with `status`."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    request = httpx2.Request("POST", "https://hub.test/api/datasets/alice/x/commit/main")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    return (cls or HfHubHTTPError)(text, response=response, server_message=server_message)


def test_transport_errors_and_endpoint():
    import httpx2

    assert hub_errors.TRANSPORT_ERRORS == (ConnectionError, TimeoutError, httpx2.TransportError)
    assert hub_errors._transport_errors() == hub_errors.TRANSPORT_ERRORS  # computed at import: checked again here
    assert hub_errors.endpoint(HubConfig(endpoint="http://127.0.0.1:9/")) == "http://127.0.0.1:9"
    assert hub_errors.endpoint(HubConfig(endpoint="https://HUBX/")) == "https://HUBX"  # only slashes are stripped
    assert hub_errors.endpoint(HubConfig()) == huggingface_hub.constants.ENDPOINT.rstrip("/")


def test_scrub_find_and_tries():
    assert hub_errors._scrub("a  b\n c\tTOKEN d", "TOKEN") == "a b c *** d"
    assert hub_errors._scrub(" a\nb ", None) == "a b"
    inner = ValueError("inner")
    try:
        try:
            raise inner
        except ValueError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as exc:
        caused = exc
    assert hub_errors._find(caused, ValueError) is inner
    assert hub_errors._find(caused, RuntimeError) is caused
    assert hub_errors._find(caused, KeyError) is None and hub_errors._find(None, ValueError) is None
    try:
        try:
            raise inner
        except ValueError:
            raise RuntimeError("during") from None  # no cause: found through the context
    except RuntimeError as exc:
        assert hub_errors._find(exc, ValueError) is inner
    deep = ValueError("deep")  # ten links down: looked at; eleven: not
    chain = deep
    for _ in range(9):
        outer = RuntimeError()
        outer.__cause__ = chain
        chain = outer
    assert hub_errors._find(chain, ValueError) is deep
    outer = RuntimeError()
    outer.__cause__ = chain
    assert hub_errors._find(outer, ValueError) is None
    assert hub_errors._tries(3) == "3 attempts" and hub_errors._tries(None) == "after huggingface_hub's retries"


def test_hub_error_messages():
    from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    cfg = HubConfig(endpoint="https://hub.test/")
    hint = hub_errors.LOGIN_HINT

    def message(status, cls=None, repo_id="alice/x", token="tok", attempts=1, revision=None, **kwargs):
        err = _http_error(status, cls, **kwargs)
        return str(hub_errors.hub_error(err, "uploading to", repo_id, cfg, token, attempts, revision))

    assert message(404, RevisionNotFoundError, revision="v9") == (
        "revision 'v9' does not exist in datasets/alice/x; pass an existing branch, tag or commit sha "
        "(e.g. alice/x@main)."
    )
    assert message(401) == f"the Hub rejected the token (HTTP 401) while uploading to datasets/alice/x; {hint}."
    assert message(401, repo_id=None) == (
        f"the Hub rejected the token (HTTP 401) while uploading to https://hub.test; {hint}."
    )
    missing = (
        f"datasets/alice/x does not exist on https://hub.test or is private; check the repo id, or {hint} "
        "with a token that can read it."
    )
    assert message(401, token=None) == message(404) == message(400, RepositoryNotFoundError) == missing
    assert message(404, RemoteEntryNotFoundError, text="no such file\nmore") == (
        "uploading to datasets/alice/x failed (HTTP 404): no such file"
    )
    assert message(403) == (
        "the token has no write access to datasets/alice/x (HTTP 403) while uploading to it; use a token with write "
        "permission for that namespace (https://huggingface.co/settings/tokens) or a --repo-id under your user."
    )
    assert message(429, attempts=3) == (
        "the Hub rate-limited uploading to datasets/alice/x (HTTP 429, 3 attempts); wait a few minutes and rerun "
        "the same command: it uploads only what is missing."
    )
    assert message(429, attempts=None).startswith("the Hub rate-limited uploading to datasets/alice/x (HTTP 429, af")
    for status in (500, 503):
        assert message(status) == (
            f"the Hub failed while uploading to datasets/alice/x (HTTP {status}, 1 attempts); rerun the same "
            "command: it uploads only what is missing."
        )
    failed = "uploading to datasets/alice/x failed"
    assert message(499, server_message="bad  tok\nthing") == f"{failed} (HTTP 499): bad *** thing"
    assert message(400, text="first tok line\nsecond") == f"{failed} (HTTP 400): first *** line"
    err = _http_error(400)
    err.response = None  # no response: no status
    assert str(hub_errors.hub_error(err, "reading", "alice/x", cfg, None)) == (
        "reading datasets/alice/x failed (HTTP None): boom"
    )
    # the defaults: one attempt, no revision named
    assert "(HTTP 500, 1 attempts)" in str(hub_errors.hub_error(_http_error(500), "reading", "alice/x", cfg, None))
    revision = hub_errors.hub_error(_http_error(404, RevisionNotFoundError), "reading", "alice/x", cfg, None)
    assert str(revision).startswith("revision None does not exist in datasets/alice/x;")


def test_retry_after_reads_seconds_and_http_dates(monkeypatch):
    assert hub_errors._retry_after(_http_error(429)) is None
    assert hub_errors._retry_after(_http_error(429, headers={"Retry-After": ""})) is None
    assert hub_errors._retry_after(_http_error(429, headers={"Retry-After": " 7 "})) == 7.0
    assert hub_errors._retry_after(_http_error(429, headers={"Retry-After": "soon"})) is None
    monkeypatch.setattr(hub_errors.time, "time", lambda: 1_000_000.0)
    later = email.utils.formatdate(1_000_090.0, usegmt=True)
    assert hub_errors._retry_after(_http_error(429, headers={"Retry-After": later})) == 90.0
    earlier = email.utils.formatdate(999_000.0, usegmt=True)
    assert hub_errors._retry_after(_http_error(429, headers={"Retry-After": earlier})) == 0.0
    err = _http_error(429)
    err.response = None
    assert hub_errors._retry_after(err) is None


def test_caller_retries_what_it_should_and_reports_in_one_line(caplog):
    cfg = HubConfig(endpoint="https://hub.test", max_retries=2, retry_wait=0.5, max_wait=8.0)
    slept: list[float] = []
    call = hub_errors.Caller(cfg, "tok", sleep=slept.append)

    def failing(*errors, result="done"):
        queue = list(errors)

        def fn():
            if queue:
                raise queue.pop(0)
            return result

        return fn

    assert call("uploading to", "alice/x", failing()) == "done" and slept == []
    with caplog.at_level("WARNING", logger="dsco_hub.hub"):
        assert call("uploading to", "alice/x", failing(_http_error(500), _http_error(503))) == "done"
    assert slept == [0.5, 1.0]  # retry_wait, doubled
    assert [r.getMessage() for r in caplog.records] == [
        "uploading to alice/x: HTTP 500, retrying in 0.5 s (1/2)",
        "uploading to alice/x: HTTP 503, retrying in 1.0 s (2/2)",
    ]
    slept.clear()
    with pytest.raises(HubError) as err:
        call("uploading to", "alice/x", failing(*[_http_error(429)] * 3))
    assert str(err.value).startswith("the Hub rate-limited uploading to datasets/alice/x (HTTP 429, 3 attempts)")
    assert slept == [0.5, 1.0]
    slept.clear()
    assert call("uploading to", "alice/x", failing(_http_error(429, headers={"Retry-After": "8"}))) == "done"
    assert slept == [8.0]  # as long as max_wait: still waited
    with pytest.raises(HubError) as err:
        call("uploading to", "alice/x", failing(_http_error(429, headers={"Retry-After": "9"})))
    assert str(err.value) == (
        "the Hub asks to wait 9 s (HTTP 429) before uploading to datasets/alice/x; rerun the same command later: it "
        "uploads only what is missing."
    )
    slept.clear()
    for status in (400, 403):  # not retried
        with pytest.raises(HubError, match=rf"\(HTTP {status}"):
            call("uploading to", "alice/x", failing(_http_error(status)))
    with pytest.raises(HubError) as err:  # retry=False: huggingface_hub retried it already
        call("listing", "alice/x", failing(_http_error(500)), retry=False)
    assert "(HTTP 500, after huggingface_hub's retries)" in str(err.value) and slept == []
    with pytest.raises(HubError, match="revision 'v9' does not exist"):
        from huggingface_hub.errors import RevisionNotFoundError

        call("reading", "alice/x", failing(_http_error(404, RevisionNotFoundError)), revision="v9")
    own = HubError("ours")
    with pytest.raises(HubError) as err:
        call("uploading to", "alice/x", failing(own))
    assert err.value is own and slept == []
    with pytest.raises(KeyError):  # neither HTTP nor connection: not ours to describe
        call("uploading to", "alice/x", failing(KeyError("k")))
    during = _http_error(400)  # an HTTP error raised while handling a dropped connection: an HTTP error
    during.__context__ = ConnectionError("dropped before")
    with pytest.raises(HubError, match=r"failed \(HTTP 400\): boom"):
        call("uploading to", "alice/x", failing(during))
    assert slept == []
    wrapped = RuntimeError("lfs")  # an HTTP error wrapped by the client is still found and retried
    wrapped.__cause__ = _http_error(502)
    assert call("uploading to", "alice/x", failing(wrapped)) == "done" and slept == [0.5]

    slept.clear()
    caplog.clear()
    with caplog.at_level("WARNING", logger="dsco_hub.hub"), pytest.raises(HubError) as err:
        call("checking the token on", None, failing(*[ConnectionError("down")] * 3))
    assert str(err.value) == (
        "cannot reach https://hub.test while checking the token on the Hub (ConnectionError, 3 attempts); check "
        "your connection and --endpoint / HF_ENDPOINT, then rerun."
    )
    assert isinstance(err.value.__cause__, ConnectionError) and slept == [0.5, 1.0]
    assert caplog.records[0].getMessage() == "checking the token on the Hub: ConnectionError, retrying in 0.5 s (1/2)"
    with pytest.raises(HubError) as err:
        call("uploading to", "alice/x", failing(TimeoutError()), retry=False)
    assert "while uploading to datasets/alice/x (TimeoutError, after huggingface_hub's retries)" in str(err.value)
    none = hub_errors.Caller(HubConfig(max_retries=0), None, sleep=slept.append)
    with pytest.raises(HubError, match=r"HTTP 500, 1 attempts"):
        none("uploading to", "alice/x", failing(_http_error(500)))


# ---------------------------------------------------------------------------------------------------------------------
# hub: targets, tokens, the client, what a push sends and what an evaluation commits (mutation survivors)
# ---------------------------------------------------------------------------------------------------------------------


def test_is_hub_ref_tells_hub_ids_from_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.is_hub_ref("alice/set@dev") and hub.is_hub_ref("set") and hub.is_hub_ref("alice/set")
    for target in ("./set", "/set", "~/set", "~no-such-user-x/set", ".set", "a/b/c", "alice/bad name", "alice/-set"):
        assert not hub.is_hub_ref(target), target
    (tmp_path / "alice" / "local").mkdir(parents=True)
    assert not hub.is_hub_ref("alice/local")  # an existing folder


def test_resolve_token_and_the_client(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(HubError) as err:
        hub.resolve_token(HubConfig())
    assert str(err.value) == (
        f"no Hugging Face token found: publishing needs a token with write access; {hub_errors.LOGIN_HINT} "
        "(create one at https://huggingface.co/settings/tokens)."
    )
    with pytest.raises(HubError, match="no Hugging Face token found"):
        hub._connect(HubConfig())
    assert hub.resolve_token(HubConfig(), required=False) is None
    assert hub._connect(HubConfig(), required=False).token is None
    monkeypatch.setenv("HF_TOKEN", "from-env")
    assert hub.resolve_token(HubConfig()) == "from-env" and hub.resolve_token(HubConfig(token="given")) == "given"
    cfg = HubConfig(endpoint="http://127.0.0.1:9", token="given")
    client = hub._connect(cfg)
    assert (client.api.endpoint, client.api.token, client.token) == ("http://127.0.0.1:9", "given", "given")
    assert (client.api.library_name, client.api.library_version) == ("dsco-hub", hub.__version__)
    assert client.call.cfg is cfg and client.call.token == "given"


def test_whoami_and_preflight(fake_hub):
    from dsco_hub.errors import ConfigError

    assert hub.whoami(_cfg(fake_hub)) == "alice" and hub.preflight(_cfg(fake_hub, repo_id="alice/ok")) == "alice"
    with pytest.raises(HubError) as err:
        hub.whoami(_cfg(fake_hub, token="hf_wrong_token"))
    assert str(err.value) == (
        f"the Hub rejected the token (HTTP 401) while checking the token on {fake_hub.url}; {hub_errors.LOGIN_HINT}."
    )
    with pytest.raises(HubError, match=r"--repo-id='alice/a/b' is not a valid dataset repo id"):
        hub.preflight(_cfg(fake_hub, repo_id="alice/a/b"))
    with pytest.raises(ConfigError, match="max_retries=-1"):
        hub.preflight(_cfg(fake_hub, max_retries=-1))


def test_same_compares_size_then_lfs_sha256_or_git_blob_id(tmp_path):
    import hashlib

    from huggingface_hub.utils.sha import git_hash

    local = tmp_path / "f"
    local.write_bytes(b"hello")
    remote = types.SimpleNamespace
    assert not hub._same(None, local)
    assert hub._same(remote(size=5, lfs=None, blob_id=git_hash(b"hello")), local)
    assert not hub._same(remote(size=5, lfs=None, blob_id=git_hash(b"hellO")), local)
    assert not hub._same(remote(size=4, lfs=None, blob_id=git_hash(b"hello")), local)
    assert not hub._same(remote(lfs=None, blob_id=git_hash(b"hello")), local)  # no size: not the same
    sha = hashlib.sha256(b"hello").hexdigest()
    assert hub._same(remote(size=5, lfs=remote(sha256=sha), blob_id="other"), local)
    assert not hub._same(remote(size=5, lfs=remote(sha256=sha[::-1]), blob_id=git_hash(b"hello")), local)


def test_local_files_and_batches(tmp_path):
    from dsco_hub.errors import OutputError

    folder = tmp_path / "set"
    (folder / "data").mkdir(parents=True)
    with pytest.raises(OutputError) as err:
        hub._local_files(folder, "ipc2")
    assert str(err.value) == (
        f"FOLDER={str(folder)!r} has no data/*.parquet shards; push a folder written by `dsco-hub concentrate`."
    )
    for name in ("data/b.parquet", "data/a.parquet", "data/notes.txt", "samples.png"):
        (folder / name).write_bytes(b"x" * 10)
    files = hub._local_files(folder, "ipc2")  # shards in order, then what exists of samples.png, dsco_config.json
    assert files == [
        ("ipc2/a.parquet", folder / "data" / "a.parquet"),
        ("ipc2/b.parquet", folder / "data" / "b.parquet"),
        ("ipc2/samples.png", folder / "samples.png"),
    ]
    assert hub._batches([], 2, 20) == []
    assert hub._batches(files, 2, 20) == [files[:2], files[2:]]  # 2 files of 10 bytes fill a 20-byte commit
    assert hub._batches(files, 3, 20) == [files[:2], files[2:]]
    assert hub._batches(files, 3, 19) == [[f] for f in files]
    assert hub._batches(files, 1, 100) == [[f] for f in files]


def _head(fake: FakeHub, repo_id: str, revision: str = "main"):
    repo = fake.repos[repo_id]
    return repo.commits[repo.refs[revision]]


def test_push_refusals_the_default_repo_name_and_the_commit_titles(fake_hub, tiny_repo, tmp_path):
    from dsco_hub.errors import OutputError

    empty = tmp_path / "empty"
    empty.mkdir()
    refusal = f"FOLDER={str(empty)!r} is not a set written by dsco-hub (no README.md with a dsco: block); run "
    with pytest.raises(OutputError) as err:
        hub.push_folder(empty, _cfg(fake_hub))
    assert str(err.value) == refusal + "`dsco-hub concentrate` first."
    (empty / "README.md").write_text("---\ndsco:\n  method: random\n---\n# no ipc\n")
    with pytest.raises(OutputError, match="is not a set written by dsco-hub"):
        hub.push_folder(empty, _cfg(fake_hub))

    out = _make_set(tiny_repo, tmp_path / "set")
    config = out / "dsco_config.json"
    saved = config.read_text()
    config.write_bytes(saved.encode() + b"\xff" + TOKEN.encode())  # an undecodable byte does not hide the token
    with pytest.raises(HubError) as err:
        hub.push_folder(out, _cfg(fake_hub, repo_id="alice/leak"))
    assert str(err.value) == f"refusing to upload {config}: it contains the Hub token; remove it and rerun."
    config.write_text(saved)
    assert "alice/leak" not in fake_hub.repos

    result = hub.push_folder(out, _cfg(fake_hub, repo_id="bare", commit_max_files=2))  # a name: the user's repo
    head = _head(fake_hub, "alice/bare")
    assert (result.repo_id, result.revision, result.url) == (
        "alice/bare",
        "main",
        f"{fake_hub.url}/datasets/alice/bare",
    )
    assert (result.commit, result.pr_url, result.deleted, result.skipped) == (head.oid, None, [], [])
    assert (
        result.commits == 2
        and not fake_hub.repos["alice/bare"].private
        and fake_hub.repos["alice/bare"].gated is False
    )
    assert result.uploaded == [p for p, _ in hub._local_files(out, "ipc2")] + ["README.md"]
    titles = [fake_hub.repos["alice/bare"].commits[c["oid"]].title for c in fake_hub.commits]
    title = "Upload ipc2 (random, IPC 2, 6 images) with dsco-hub"
    assert titles == [f"{title} [part 1/2]", title]  # the card joins the last batch when it has room
    again = hub.push_folder(out, _cfg(fake_hub, repo_id="alice/bare"))
    assert (again.commits, again.commit, len(again.skipped)) == (0, head.oid, 3)

    fake_hub.reset_log()
    hub.push_folder(out, _cfg(fake_hub, repo_id="alice/titled", commit_message="Mine"))
    assert _head(fake_hub, "alice/titled").title == "Mine"

    # each call's failure names what was being done, and on which repo
    with pytest.raises(HubError) as err:
        hub.push_folder(out, _cfg(fake_hub, token="hf_not_valid"))
    assert str(err.value) == (
        f"the Hub rejected the token (HTTP 401) while checking the token on {fake_hub.url}; {hub_errors.LOGIN_HINT}."
    )
    with pytest.raises(HubError) as err:
        hub.push_folder(out, _cfg(fake_hub, repo_id="bob/theirs"))
    assert str(err.value).startswith(
        "the token has no write access to datasets/bob/theirs (HTTP 403) while creating it;"
    )
    fake_hub.fail("GET", r"/api/datasets/alice/listing/tree/", 403)
    with pytest.raises(HubError) as err:
        hub.push_folder(out, _cfg(fake_hub, repo_id="alice/listing"))
    assert str(err.value).startswith(
        "the token has no write access to datasets/alice/listing (HTTP 403) while listing it;"
    )
    text = (out / "README.md").read_text()
    meta = _yaml(text)
    meta["dsco"]["source"].update(id="alice/missing-source", is_hub=True)
    (out / "README.md").write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---" + text.split("---", 2)[2])
    with pytest.raises(HubError) as err:
        hub.push_folder(out, _cfg(fake_hub, repo_id="alice/terms"))
    assert str(err.value).startswith(f"datasets/alice/missing-source does not exist on {fake_hub.url} or is private;")


def _eval_block(commit: str) -> dict:
    result = {"accuracy_mean": 50.0, "accuracy_std": 1.0, "model": "convnet3", "epochs": 1, "runs": 1}
    return {
        "protocol": {"model": "auto", "epochs": 1, "runs": 1},
        "test": {"dataset": "tiny", "split": "test", "num_images": 12},
        "result": result,
        "commit": commit,
    }


def test_open_set_and_update_card_eval_pick_the_branch_and_name_the_commit(fake_hub, tiny_repo, tmp_path):
    out = _make_set(tiny_repo, tmp_path / "set")
    cfg = _cfg(fake_hub, repo_id="alice/target")
    pushed = hub.push_folder(out, cfg)
    hub.push_folder(out, _cfg(fake_hub, repo_id="alice/target", revision="dev", commit_message="to dev"))
    main_card = fake_hub.read("alice/target", "README.md")
    HfApi(endpoint=fake_hub.url, token=TOKEN).create_commit(  # main moves on, dev stays
        "alice/target", [CommitOperationAdd("notes.txt", b"notes")], commit_message="notes", repo_type="dataset"
    )
    again = hub.push_folder(out, _cfg(fake_hub, repo_id="alice/target", revision="dev"))  # the branch exists: fine
    assert again.commits == 0 and again.revision == "dev"
    assert again.commit == _head(fake_hub, "alice/target", "dev").oid != _head(fake_hub, "alice/target").oid

    published = hub.open_set("alice/target@dev", _cfg(fake_hub, token=None))
    dev_head = _head(fake_hub, "alice/target", "dev")
    assert (published.repo_id, published.revision, published.sha) == ("alice/target", "dev", dev_head.oid)
    assert published.config_name == "ipc2" and published.dsco["ipc"] == 2 and published.card is not None
    url, pr = hub.update_card_eval(published, _eval_block(published.sha), _cfg(fake_hub))
    assert pr is None and _head(fake_hub, "alice/target", "dev").oid in url  # on dev, the evaluated branch
    assert _head(fake_hub, "alice/target", "dev").title == f"dsco-hub evaluation of ipc2 at {published.sha[:8]}"
    assert fake_hub.read("alice/target", "README.md") == main_card
    dev_card = fake_hub.read("alice/target", "README.md", "dev").decode()
    assert "50.00 ± 1.00" in dev_card and 'load_dataset("alice/target", split="train")' in dev_card

    at_sha = hub.open_set(f"alice/target@{pushed.commit}", _cfg(fake_hub))  # a commit: the card on main
    hub.update_card_eval(at_sha, _eval_block(pushed.commit), _cfg(fake_hub, commit_message="eval"))
    assert _head(fake_hub, "alice/target").title == "eval" and fake_hub.read("alice/target", "README.md") != main_card
    main_head = _head(fake_hub, "alice/target").oid
    block = {**_eval_block(published.sha), "result": {**_eval_block("")["result"], "accuracy_mean": 60.0}}
    hub.update_card_eval(published, block, _cfg(fake_hub, revision="dev", create_pr=True))
    assert _head(fake_hub, "alice/target", "refs/pr/1").parent == _head(fake_hub, "alice/target", "dev").oid
    assert _head(fake_hub, "alice/target").oid == main_head

    with pytest.raises(HubError) as err:
        hub.open_set("alice/target", _cfg(fake_hub, token="hf_not_valid"))
    assert str(err.value).startswith("the Hub rejected the token (HTTP 401) while reading datasets/alice/target;")
    fake_hub.fail("GET", r"/api/datasets/alice/target/refs", 500)
    with pytest.raises(HubError) as err:
        hub.open_set("alice/target@v9", _cfg(fake_hub, max_retries=0))
    assert str(err.value).startswith(
        "the Hub failed while listing the branches of datasets/alice/target (HTTP 500, 1 attempts);"
    )
    api = HfApi(endpoint=fake_hub.url, token=TOKEN)
    api.create_repo("alice/no-branches", repo_type="dataset")
    fake_hub.repos["alice/no-branches"].refs.clear()
    with pytest.raises(HubError) as err:
        hub.open_set("alice/no-branches@v1", _cfg(fake_hub))
    assert str(err.value) == (
        "revision 'v1' does not exist in datasets/alice/no-branches; its branches: none. Pass one of them or a "
        "commit sha, e.g. alice/no-branches@main."
    )


def test_hub_session_points_the_libraries_at_the_endpoint_and_restores_them(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", "before")
    saved = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE)
    saved_datasets = (datasets.config.HF_ENDPOINT, datasets.config.HUB_DATASETS_URL)
    with hub.hub_session(HubConfig(endpoint="http://127.0.0.1:9/", token="inside")):
        assert constants.ENDPOINT == datasets.config.HF_ENDPOINT == "http://127.0.0.1:9"
        assert constants.HUGGINGFACE_CO_URL_TEMPLATE == "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}"
        assert datasets.config.HUB_DATASETS_URL == "http://127.0.0.1:9/datasets/{repo_id}/resolve/{revision}/{path}"
        assert os.environ["HF_TOKEN"] == "inside"
    assert (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE) == saved
    assert (datasets.config.HF_ENDPOINT, datasets.config.HUB_DATASETS_URL) == saved_datasets
    assert os.environ["HF_TOKEN"] == "before"
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(KeyError), hub.hub_session(HubConfig(token="inside")):
        assert os.environ["HF_TOKEN"] == "inside" and constants.ENDPOINT == saved[0]
        raise KeyError("restored all the same")
    assert "HF_TOKEN" not in os.environ
    with hub.hub_session(HubConfig()):
        assert "HF_TOKEN" not in os.environ and constants.ENDPOINT == saved[0]


def test_a_card_that_would_carry_the_token_is_not_uploaded(fake_hub, tiny_repo, tmp_path):
    api = HfApi(endpoint=fake_hub.url, token=TOKEN)
    api.create_repo("alice/leaky-card", repo_type="dataset")
    leaky = f"---\nlicense: mit\nnote: {TOKEN}\n---\n# theirs\n".encode()
    api.create_commit(
        "alice/leaky-card", [CommitOperationAdd("README.md", leaky)], commit_message="card", repo_type="dataset"
    )
    out = _make_set(tiny_repo, tmp_path / "set")
    with pytest.raises(HubError) as err:
        hub.push_folder(out, _cfg(fake_hub, repo_id="alice/leaky-card"))
    assert str(err.value) == "refusing to upload README.md: the card would contain the Hub token."
    published = hub.open_set("alice/leaky-card", _cfg(fake_hub))
    with pytest.raises(HubError) as err:
        hub.update_card_eval(published, _eval_block(published.sha), _cfg(fake_hub))
    assert str(err.value) == "refusing to upload README.md: the card would contain the Hub token."
    assert fake_hub.read("alice/leaky-card", "README.md") == leaky


def test_a_downloaded_set_with_several_configs_is_evaluated_at_the_config_asked_for(fake_hub, tiny_repo, tmp_path):
    # a folder copy of a Hub set (huggingface_hub.snapshot_download) keeps every config: --set-config picks one there
    # as on the Hub, and the folder's card gives that config's dsco: block
    cfg = _cfg(fake_hub, repo_id="alice/two")
    hub.push_folder(_make_set(tiny_repo, tmp_path / "set2"), cfg)
    hub.push_folder(_make_set(tiny_repo, tmp_path / "set3", ipc=3), cfg)
    folder = huggingface_hub.snapshot_download(
        "alice/two", repo_type="dataset", local_dir=tmp_path / "download", endpoint=fake_hub.url, token=TOKEN
    )
    for config, ipc in (("ipc3", 3), ("ipc2", 2), (None, 2)):  # None: the card's default, the first pushed
        opened = assess._open_target(folder, HubConfig(), config, None, None, False, None)
        assert (opened.set_cfg.config_name, opened.dsco["ipc"]) == (config, ipc)
        assert load_source(opened.set_cfg).labels.tolist() == [k for k in range(3) for _ in range(ipc)]
    with pytest.raises(HubError) as err:
        assess._open_target(folder, HubConfig(), "ipc9", None, None, False, None)
    assert str(err.value) == f"--set-config='ipc9' is not a config of {folder}; its configs: ipc2, ipc3."
    with pytest.raises(HubError) as err:  # a folder written by `concentrate` has one config, before it is pushed
        assess._open_target(str(tmp_path / "set2"), HubConfig(), "ipc2", None, None, False, None)
    assert str(err.value) == f"--set-config='ipc2' is not a config of {tmp_path / 'set2'}; its configs: default."
    (tmp_path / "set2" / "README.md").unlink()  # no card, so no configs: nothing --set-config could pick
    with pytest.raises(SourceError) as err:
        assess._open_target(str(tmp_path / "set2"), HubConfig(), "ipc2", None, None, False, None)
    assert str(err.value) == (
        f"--set-config='ipc2': TARGET={str(tmp_path / 'set2')!r} is a folder whose card declares no configs; pass "
        "the folder without --set-config."
    )


def test_update_card_eval_reads_and_commits_on_the_target_branch_and_names_the_config(fake_hub, tiny_repo, tmp_path):
    cfg = _cfg(fake_hub, repo_id="alice/two")
    hub.push_folder(_make_set(tiny_repo, tmp_path / "set2"), cfg)
    hub.push_folder(_make_set(tiny_repo, tmp_path / "set3", ipc=3), cfg)
    api = HfApi(endpoint=fake_hub.url, token=TOKEN)
    api.create_branch("alice/two", branch="dev", repo_type="dataset")
    marked = fake_hub.read("alice/two", "README.md", "dev").replace(b"---\n", b"---\nmarked_on: dev\n", 1)
    api.create_commit(
        "alice/two",
        [CommitOperationAdd("README.md", marked)],
        commit_message="mark",
        repo_type="dataset",
        revision="dev",
    )
    main_card = fake_hub.read("alice/two", "README.md")

    published = hub.open_set("alice/two", _cfg(fake_hub), config_name="ipc3")  # main, no revision asked
    assert (published.revision, published.config_name) == (None, "ipc3")
    fake_hub.reset_log()
    hub.update_card_eval(published, _eval_block(published.sha), _cfg(fake_hub, revision="dev"))
    assert not _calls(fake_hub, "GET", "/refs")  # no revision asked: no branches to list
    dev_card = fake_hub.read("alice/two", "README.md", "dev").decode()
    assert "marked_on: dev" in dev_card and "50.00 ± 1.00" in dev_card  # read at dev's head, cfg.revision
    assert _head(fake_hub, "alice/two", "dev").title == f"dsco-hub evaluation of ipc3 at {published.sha[:8]}"
    assert fake_hub.read("alice/two", "README.md") == main_card
    fake_hub.reset_log()
    hub.update_card_eval(published, _eval_block(published.sha), _cfg(fake_hub))  # no revision anywhere: main
    assert not _calls(fake_hub, "GET", "/refs") and "50.00 ± 1.00" in fake_hub.read("alice/two", "README.md").decode()

    with pytest.raises(HubError) as err:
        hub.open_set("alice/two@v9", _cfg(fake_hub))
    assert str(err.value) == (
        "revision 'v9' does not exist in datasets/alice/two; its branches: main, dev. Pass one of them or a commit "
        "sha, e.g. alice/two@main."
    )
    at_dev = hub.open_set("alice/two@dev", _cfg(fake_hub))
    assert at_dev.card.data.get("marked_on") == "dev"  # the card at the revision asked
    with pytest.raises(HubError) as err:
        hub.open_set("alice/two", _cfg(fake_hub), config_name="ipc9")
    assert str(err.value).startswith("--set-config='ipc9' is not a config of datasets/alice/two; its configs:")
    fake_hub.fail("POST", r"/api/datasets/alice/two/commit/", 500)
    with pytest.raises(HubError) as err:
        hub.update_card_eval(at_dev, _eval_block(at_dev.sha), _cfg(fake_hub, revision="dev", max_retries=0))
    assert str(err.value).startswith(
        "the Hub failed while updating the card of datasets/alice/two (HTTP 500, 1 attempts);"
    )
    fake_hub.fail("GET", r"/api/datasets/alice/two/refs", 500)
    with pytest.raises(HubError) as err:
        hub.update_card_eval(at_dev, _eval_block(at_dev.sha), _cfg(fake_hub, max_retries=0))
    assert str(err.value).startswith(
        "the Hub failed while listing the branches of datasets/alice/two (HTTP 500, 1 attempts);"
    )
    fake_hub.repos["alice/two"].refs.clear()  # no main to read the card on: the message names it
    with pytest.raises(HubError) as err:
        hub.update_card_eval(published, _eval_block(published.sha), _cfg(fake_hub))
    assert str(err.value).startswith("revision 'main' does not exist in datasets/alice/two;")


def test_a_failing_card_read_names_the_call_and_the_repo(fake_hub):
    api = HfApi(endpoint=fake_hub.url, token=TOKEN)
    api.create_repo("alice/card-401", repo_type="dataset")
    api.create_commit(
        "alice/card-401",
        [CommitOperationAdd("README.md", b"---\nlicense: mit\n---\n# theirs\n")],
        commit_message="card",
        repo_type="dataset",
    )
    fake_hub.fail("HEAD", r"/datasets/alice/card-401/resolve/", 401)
    with pytest.raises(HubError) as err:
        hub.open_set("alice/card-401", _cfg(fake_hub))
    assert str(err.value) == (
        "the Hub rejected the token (HTTP 401) while reading the card of datasets/alice/card-401; "
        f"{hub_errors.LOGIN_HINT}."
    )


def test_a_card_the_hub_fails_to_serve_is_an_error_not_no_card(fake_hub, tiny_repo, tmp_path):
    # a push that took the failure for "no card" would write a card without the repo's other configs
    out = _make_set(tiny_repo, tmp_path / "set")
    hub.push_folder(out, _cfg(fake_hub, repo_id="alice/served"))
    card_before = fake_hub.read("alice/served", "README.md")
    fake_hub.fail("HEAD", r"/datasets/alice/served/resolve/", 500, times=100)
    with pytest.raises(HubError) as err:
        hub.open_set("alice/served", _cfg(fake_hub, max_retries=0))
    failed = "the Hub failed while reading the card of datasets/alice/served (HTTP 500, after huggingface_hub's "
    assert str(err.value).startswith(failed)
    with pytest.raises(HubError) as err:
        hub.push_folder(out, _cfg(fake_hub, repo_id="alice/served", max_retries=0))
    assert str(err.value).startswith(failed)
    assert fake_hub.read("alice/served", "README.md") == card_before


@pytest.mark.parametrize("streaming", [False, True])
def test_a_hub_source_is_loaded_at_the_commit_the_run_recorded(fake_hub, tmp_path, monkeypatch, streaming):
    # the run fingerprints a Hub source by the commit main resolves to when it starts; a push to main right after
    # (before the data is loaded) must not mix in: the set, its test split and its card are those of that commit
    api = HfApi(endpoint=fake_hub.url, token=TOKEN)
    name = f"alice/moving-source-{'streamed' if streaming else 'loaded'}"
    repo = {"repo_id": name, "repo_type": "dataset"}
    api.create_repo(**repo)
    api.upload_folder(folder_path=str(write_repo(tmp_path / "v1", tiny_dataset(), tiny_dataset((2, 2, 2)))), **repo)
    first = api.dataset_info(name).sha
    newer = write_repo(tmp_path / "v2", tiny_dataset((5, 5, 5), seed_offset=50), tiny_dataset((3, 3, 3)))
    fingerprint = pipeline.fingerprint

    def then_push(source_cfg):
        found = fingerprint(source_cfg)
        api.upload_folder(folder_path=str(newer), commit_message="v2", **repo)
        return found

    monkeypatch.setattr(pipeline, "fingerprint", then_push)
    cfg = ConcentrateConfig(
        source=SourceConfig(source=name, streaming=streaming),
        out=str(tmp_path / "set"),
        method="random",
        ipc=2,
        eval=FAST_EVAL,
    )
    with hub.hub_session(HubConfig(endpoint=fake_hub.url, token=TOKEN)):
        if streaming:  # a crash after the push: the resume reads the rows saved from the first commit, not main
            compute_unit = synthesis.compute_unit

            def crash(unit, *args, **kwargs):
                if unit.index == 1:
                    raise RuntimeError("crash at unit 1")
                return compute_unit(unit, *args, **kwargs)

            monkeypatch.setattr(synthesis, "compute_unit", crash)
            with pytest.raises(RuntimeError, match="crash at unit 1"):
                pipeline.concentrate(cfg)
            monkeypatch.setattr(synthesis, "compute_unit", compute_unit)
            monkeypatch.setattr(pipeline, "fingerprint", fingerprint)
        result = pipeline.concentrate(cfg)
    assert api.dataset_info(name).sha != first  # main moved during the run
    source = result.dsco["source"]
    assert (source["id"], source["revision"], source["num_rows"]) == (name, first, 19)
    assert result.dsco["eval"]["test"]["num_images"] == 6  # the first commit's test split (the newer has 9)
    saved = json.loads((result.out / "dsco_config.json").read_text())
    assert saved["source"]["revision"] is None  # the option as given; the commit is the fingerprint's
    assert saved["source_fingerprint"] == {"kind": "hub", "value": first, "files": None}
    ours = datasets.Dataset.from_parquet(str(next((result.out / "data").glob("*.parquet"))))
    theirs = tiny_dataset()  # the first commit's training split, in its row order
    for row in ours:
        assert np.array_equal(np.asarray(row["image"]), np.asarray(theirs[row["source_index"]]["image"]))


def test_an_evaluation_reads_a_hub_test_source_at_one_commit(fake_hub, tmp_path, monkeypatch):
    # `evaluate --test-dataset USER/NAME` loads the test source twice (its test split, then the training split the
    # random-real baseline draws from): a push to main between the two loads must not mix in, and the results must
    # name the commit they were tested on
    api = HfApi(endpoint=fake_hub.url, token=TOKEN)
    name = "alice/moving-test-source"
    repo = {"repo_id": name, "repo_type": "dataset"}
    api.create_repo(**repo)
    api.upload_folder(folder_path=str(write_repo(tmp_path / "v1", tiny_dataset(), tiny_dataset((2, 2, 2)))), **repo)
    first = api.dataset_info(name).sha
    newer = write_repo(tmp_path / "v2", tiny_dataset((5, 5, 5), seed_offset=50), tiny_dataset((3, 3, 3)))
    load_test, load_source, loaded = assess.load_test, assess.load_source, []

    def then_push(*args, **kwargs):
        found = load_test(*args, **kwargs)
        api.upload_folder(folder_path=str(newer), commit_message="v2", **repo)
        return found

    def recorded(cfg, *args, **kwargs):
        loaded.append((cfg.source, cfg.revision))
        return load_source(cfg, *args, **kwargs)

    monkeypatch.setattr(assess, "load_test", then_push)
    monkeypatch.setattr(assess, "load_source", recorded)
    the_set = write_repo(tmp_path / "set", tiny_dataset((2, 2, 2), seed_offset=20))
    doc = assess.evaluate_report(
        str(the_set), SourceConfig(source=name), EvalConfig(runs=1, epochs=1, baseline=True), hub_cfg=_cfg(fake_hub)
    )
    assert api.dataset_info(name).sha != first  # main moved between the test split and the baseline's source
    assert doc["test"] == {"dataset": name, "split": "test", "num_images": 6, "revision": first}  # v2's test has 9
    assert loaded[-1] == (name, first)  # the baseline's images: the first commit's training split, not v2's
    jsonschema.validate(doc, results.schema())


def test_a_hub_test_dataset_of_a_concentration_is_read_at_a_commit_the_card_records(fake_hub, tmp_path):
    # `concentrate --test-dataset USER/NAME`: the card names the commit the test split was read at
    api = HfApi(endpoint=fake_hub.url, token=TOKEN)
    name = "alice/test-split-source"
    api.create_repo(repo_id=name, repo_type="dataset")
    hub_repo = write_repo(tmp_path / "hub", tiny_dataset(), tiny_dataset((3, 3, 3)))
    api.upload_folder(folder_path=str(hub_repo), repo_id=name, repo_type="dataset")
    cfg = ConcentrateConfig(
        source=SourceConfig(source=str(write_repo(tmp_path / "local", tiny_dataset(), tiny_dataset((2, 2, 2))))),
        test_dataset=name,
        out=str(tmp_path / "set"),
        method="random",
        ipc=2,
        eval=FAST_EVAL,
    )
    with hub.hub_session(HubConfig(endpoint=fake_hub.url, token=TOKEN)):
        result = pipeline.concentrate(cfg)
    test = result.dsco["eval"]["test"]
    assert (test["dataset"], test["num_images"], test["revision"]) == (name, 9, api.dataset_info(name).sha)
