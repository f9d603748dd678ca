"""Publish concentrated sets on the Hugging Face Hub and read published sets back.

The only module that talks to the Hub for publishing. Everything goes through `huggingface_hub.HfApi`
(`create_repo`, `create_commit`, `list_repo_tree`, `hf_hub_download`); datasets are read with `datasets`.

A pushed folder becomes the config `ipc<IPC>` of a dataset repo (`ipc10/train-*.parquet`, `ipc10/samples.png`,
`ipc10/dsco_config.json`, as `Dataset.push_to_hub(config_name="ipc10")` lays it out) and the repo's README.md is
the card `card.hub_card` merges for every config (docs/format.md describes the layout).

Uploads are resumable: the local files are compared with the remote tree (LFS sha256, or the git blob id of
regular files) and only what differs is committed, in a few commits of at most `HubConfig.commit_max_files`
files / `commit_max_bytes` bytes (the Hub limits commits per hour), the card last. LFS objects uploaded by a
failed run are not sent again (the LFS batch API reports them present). This module moves files and never edits
YAML: `card` makes every card.

Every call runs through `hub_errors.Caller`, which retries only what `huggingface_hub` does not retry itself and
turns failures into one-line `HubError`s (the list of which call is retried where is in `hub_errors`).

The token comes from `--token`, else `HF_TOKEN`, else the stored login (`hf auth login`); it is never printed,
logged or written into a file, and uploads refuse text files that contain it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCard, HfApi
from huggingface_hub.errors import (
    EntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils.sha import git_hash, sha_fileobj

from dsco_hub import __version__, card
from dsco_hub.config import REPO_NAME_RE, HubConfig, check_repo_id, default_repo_id, parse_set_ref
from dsco_hub.errors import HubError, OutputError
from dsco_hub.hub_errors import LOGIN_HINT
from dsco_hub.hub_errors import Caller as _Caller  # the name tests patch to record waits
from dsco_hub.hub_errors import endpoint as _endpoint

TEXT_FILES = ("README.md", "dsco_config.json")  # files checked for the token before any upload


# ---------------------------------------------------------------------------------------------------------------------
# Targets, tokens, the client
# ---------------------------------------------------------------------------------------------------------------------


def is_hub_ref(target: str) -> bool:
    """Whether `target` names a Hub dataset (`USER/NAME[@REV]` or `NAME[@REV]`) rather than a local folder."""
    if target.startswith((".", "/", "~")) or Path(target).exists():  # "~user/...": a path, even with no such user
        return False
    repo_id, _ = parse_set_ref(target)
    parts = repo_id.split("/")
    return len(parts) <= 2 and all(REPO_NAME_RE.match(p) for p in parts)


def resolve_token(cfg: HubConfig, required: bool = True) -> str | None:
    """The token to use: `cfg.token`, else `HF_TOKEN`, else the stored login.

    Raises:
        HubError: no token anywhere and `required` (the message says how to log in).
    """
    from huggingface_hub import get_token

    token = cfg.token or get_token()
    if token is None and required:
        raise HubError(
            "no Hugging Face token found: publishing needs a token with write access; "
            f"{LOGIN_HINT} (create one at https://huggingface.co/settings/tokens)."
        )
    return token


@dataclass
class _Client:
    """An `HfApi` on the endpoint of a `HubConfig`, with its token and the caller that runs its calls."""

    api: HfApi
    call: _Caller
    token: str | None


def _connect(cfg: HubConfig, required: bool = True) -> _Client:
    """The client of `cfg` (token from `resolve_token`; `HubError` when `required` and there is none)."""
    token = resolve_token(cfg, required=required)
    api = HfApi(endpoint=cfg.endpoint, token=token, library_name="dsco-hub", library_version=__version__)
    return _Client(api, _Caller(cfg, token), token)


def whoami(cfg: HubConfig) -> str:
    """The user name the token belongs to (checks the token before any heavy work).

    Raises:
        HubError: no token, or the Hub rejects it (HTTP 401).
    """
    client = _connect(cfg)
    return client.call("checking the token on", None, lambda: client.api.whoami()["name"])


def preflight(cfg: HubConfig) -> str:
    """Everything a push can check before the work starts: settings, repo id format, token and its user.

    Returns:
        `str`: the user name of the token.

    Raises:
        ConfigError: an option is out of range.
        HubError: malformed `--repo-id`, no token, or a token the Hub rejects.
    """
    cfg.validate()
    if cfg.repo_id is not None:
        check_repo_id(cfg.repo_id)
    return whoami(cfg)


# ---------------------------------------------------------------------------------------------------------------------
# Reading and committing
# ---------------------------------------------------------------------------------------------------------------------


def _read_card(client: _Client, repo_id: str, revision: str) -> DatasetCard | None:
    """The README card of `repo_id` at `revision`, or None when the repo has none (huggingface_hub retries).

    Only the Hub's answer that the file does not exist (`RemoteEntryNotFoundError`, a 404) means "no card". A card the
    Hub failed to serve (a 5xx after huggingface_hub's retries, a 403, a dropped connection) reaches here as
    `LocalEntryNotFoundError`, also an `EntryNotFoundError`; it raises `HubError` naming the call, since a push
    that took it for "no card" would write a card without the repo's other configs.
    """

    def download():
        try:
            path = client.api.hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision)
        except RemoteEntryNotFoundError:
            return None
        return DatasetCard.load(path)

    return client.call("reading the card of", repo_id, download, revision=revision, retry=False)


def _source_terms(client: _Client, dsco: dict) -> dict:
    """The terms of use of a Hub source to carry over to the set (`card.source_terms`); `{}` for other sources."""
    source = dsco["source"]
    if not source.get("is_hub"):
        return {}
    info = client.call(
        "reading the licence and gating of the source",
        source["id"],
        lambda: client.api.dataset_info(source["id"], revision=source.get("revision")),
    )
    return card.source_terms(info.card_data.to_dict() if info.card_data is not None else {}, info.gated, source["id"])


def _commit(client: _Client, what: str, repo_id: str, operations: list, title: str, revision: str, create_pr: bool):
    """Upload the files of `operations` (preupload and LFS: huggingface_hub retries them), then commit (retried
    here: huggingface_hub sends the commit once). A retried commit sends nothing already uploaded again.

    Returns:
        `huggingface_hub.CommitInfo`: the commit (`oid`, `commit_url`; `pr_url`, `pr_revision` with `create_pr`).
    """
    additions = [op for op in operations if isinstance(op, CommitOperationAdd)]

    def upload():
        client.api.preupload_lfs_files(
            repo_id, additions, repo_type="dataset", revision=revision, create_pr=create_pr, free_memory=False
        )

    def commit():
        return client.api.create_commit(
            repo_id, operations, commit_message=title, repo_type="dataset", revision=revision, create_pr=create_pr
        )

    client.call(what, repo_id, upload, revision=revision, retry=False)
    return client.call(what, repo_id, commit, revision=revision)


# ---------------------------------------------------------------------------------------------------------------------
# Push
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PushResult:
    """What `push_folder` did.

    Attributes:
        repo_id (`str`): the dataset repo.
        config_name (`str`): the config the folder became (e.g. "ipc10").
        revision (`str`): the branch (or pull-request ref) the commits went to.
        commit (`str`): sha of the last commit (the current head when nothing had to be uploaded).
        url (`str`): the repo's page.
        pr_url (`str`, *optional*): the pull request, with `create_pr`.
        uploaded (`list[str]`): paths committed by this push.
        skipped (`list[str]`): paths already on the Hub with the same content.
        deleted (`list[str]`): stale paths of the config removed.
        commits (`int`): number of commits made.
    """

    repo_id: str
    config_name: str
    revision: str
    commit: str
    url: str
    pr_url: str | None = None
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    commits: int = 0


def _same(remote, local: Path) -> bool:
    """Whether the remote file (a `RepoFile`) holds the content of `local` (LFS sha256 or git blob id)."""
    if remote is None or getattr(remote, "size", None) != local.stat().st_size:
        return False
    if remote.lfs is not None:
        with open(local, "rb") as f:
            return remote.lfs.sha256 == sha_fileobj(f).hex()
    return remote.blob_id == git_hash(local.read_bytes())


def _local_files(folder: Path, config_name: str) -> list[tuple[str, Path]]:
    """`(path_in_repo, local_path)` of the files to upload (data shards first, the card excluded)."""
    shards = sorted((folder / "data").glob("*.parquet"))
    if not shards:
        raise OutputError(
            f"FOLDER={str(folder)!r} has no data/*.parquet shards; push a folder written by `dsco-hub concentrate`."
        )
    files = [(f"{config_name}/{p.name}", p) for p in shards]
    files += [(f"{config_name}/{name}", folder / name) for name in ("samples.png", "dsco_config.json")]
    return [(path, local) for path, local in files if local.exists()]


def _batches(files: list[tuple[str, Path]], max_files: int, max_bytes: int) -> list[list[tuple[str, Path]]]:
    batches: list[list[tuple[str, Path]]] = []
    size = 0
    for item in files:
        nbytes = item[1].stat().st_size
        if not batches or len(batches[-1]) >= max_files or (batches[-1] and size + nbytes > max_bytes):
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += nbytes
    return batches


def push_folder(folder: str | Path, cfg: HubConfig) -> PushResult:
    """Publish a folder written by `dsco-hub concentrate` as config `ipc<IPC>` of a dataset repo on the Hub.

    Creates the repo (`private` when asked) and the branch if needed, gates the repo as its Hub source is gated
    before any file reaches it (a pull request is opened only on a repo that is gated, private or new), uploads
    only the files whose content is not already on the Hub, deletes the config's stale shards and writes the
    merged card (`card.hub_card`) last.
    Rerunning after a failure finishes the upload without sending again what was committed.

    Args:
        folder (`str` or `Path`): the set: `README.md` with a `dsco:` block, `data/*.parquet`, `samples.png`,
            `dsco_config.json`.
        cfg (`HubConfig`): repo id, branch, pull request, commit message, token, endpoint, retries, commit sizes.

    Returns:
        `PushResult`: the repo, config, commits and what was uploaded, skipped or deleted.

    Raises:
        ConfigError: an option of `cfg` is out of range.
        OutputError: `folder` is not a set written by dsco-hub.
        HubError: no token, malformed repo id, 401/403, a pull request (`create_pr`) that would put a gated
            source's images in a public, ungated repo, or the Hub kept failing (after retries).
    """
    cfg.validate()
    folder = Path(folder).expanduser()
    readme = folder / "README.md"
    local = DatasetCard.load(readme) if readme.exists() else None
    dsco = local.data.get("dsco") if local is not None else None
    if not isinstance(dsco, dict) or "ipc" not in dsco:
        raise OutputError(
            f"FOLDER={str(folder)!r} is not a set written by dsco-hub (no README.md with a dsco: block); "
            "run `dsco-hub concentrate` first."
        )
    if cfg.repo_id is not None:
        check_repo_id(cfg.repo_id)
    client = _connect(cfg)
    api, call, token = client.api, client.call, client.token
    config_name = f"ipc{dsco['ipc']}"
    files = _local_files(folder, config_name)
    for path in (folder / name for name in TEXT_FILES):
        if path.exists() and token in path.read_text(errors="ignore"):
            raise HubError(f"refusing to upload {path}: it contains the Hub token; remove it and rerun.")

    terms = _source_terms(client, dsco)  # read before anything is created: a failed read leaves nothing behind

    # 1. Repo, gating and branch
    repo_id = cfg.repo_id
    if repo_id is None or "/" not in repo_id:
        user = call("checking the token on", None, lambda: api.whoami()["name"])
        repo_id = default_repo_id(user, dsco) if repo_id is None else f"{user}/{repo_id}"
        check_repo_id(repo_id)
    gated = terms.get("gated")
    existing = None  # a pull request cannot gate, and its ref is as readable as the repo: read before creating
    if gated and cfg.create_pr:

        def access():
            try:
                return api.dataset_info(repo_id)
            except RepositoryNotFoundError:
                return None  # created below, by this token's user, who can gate it

        existing = call("reading the access settings of", repo_id, access)
        if existing is not None and not existing.gated and not existing.private:
            raise HubError(
                f"refusing to open a pull request with images of the gated source {dsco['source']['id']} on "
                f"datasets/{repo_id}, which is public and not gated; ask its owner to gate it, or push to a "
                "repo of yours without --create-pr."
            )
    call(
        "creating",
        repo_id,
        lambda: api.create_repo(repo_id, repo_type="dataset", private=cfg.private or None, exist_ok=True),
    )
    if gated and existing is None:  # before any upload: a gated source's images never sit in an ungated repo
        call("gating", repo_id, lambda: api.update_repo_settings(repo_id, gated=gated, repo_type="dataset"))
    base = cfg.revision or "main"
    if cfg.revision is not None and not cfg.revision.startswith("refs/"):
        call(
            "creating branch " + cfg.revision + " in",
            repo_id,
            lambda: api.create_branch(repo_id, branch=cfg.revision, repo_type="dataset", exist_ok=True),
        )

    # 2. What is already there
    def tree():
        try:
            entries = api.list_repo_tree(
                repo_id, path_in_repo=config_name, recursive=True, revision=base, repo_type="dataset"
            )
            return {e.path: e for e in entries if hasattr(e, "blob_id")}
        except EntryNotFoundError:
            return {}

    remote_files = call("listing", repo_id, tree, revision=base, retry=False)
    remote_card = _read_card(client, repo_id, base)
    content = card.hub_card(local, remote_card, config_name, repo_id, terms).encode()
    if token in content.decode(errors="ignore"):
        raise HubError("refusing to upload README.md: the card would contain the Hub token.")
    wanted = {path for path, _ in files}
    pending = [(path, local_path) for path, local_path in files if not _same(remote_files.get(path), local_path)]
    skipped = [path for path, _ in files if path not in {p for p, _ in pending}]
    stale = sorted(p for p in remote_files if p not in wanted)
    card_changed = remote_card is None or str(remote_card).encode() != content

    # 3. Commits: data in batches, the card (and deletions) last
    message = cfg.commit_message or (
        f"Upload {config_name} ({dsco['method']}, IPC {dsco['ipc']}, {dsco['counts']['rows']} images) with dsco-hub"
    )
    batches = _batches(pending, cfg.commit_max_files, cfg.commit_max_bytes)
    if card_changed or stale:
        if not batches or len(batches[-1]) >= cfg.commit_max_files:
            batches.append([])
    result = PushResult(
        repo_id, config_name, base, "", f"{_endpoint(cfg)}/datasets/{repo_id}", skipped=skipped, deleted=stale
    )
    revision, create_pr = base, cfg.create_pr
    for index, batch in enumerate(batches):
        last = index == len(batches) - 1
        operations: list = [CommitOperationAdd(path, str(local_path)) for path, local_path in batch]
        if last:
            operations += [CommitOperationDelete(path) for path in stale]
            if card_changed:
                operations.append(CommitOperationAdd("README.md", content))
        title = message if last else f"{message} [part {index + 1}/{len(batches)}]"
        info = _commit(client, "uploading to", repo_id, operations, title, revision, create_pr)
        result.commits += 1
        result.commit = info.oid
        result.uploaded += [op.path_in_repo for op in operations if isinstance(op, CommitOperationAdd)]
        if create_pr:  # the next commits go to the pull request's ref
            result.pr_url, revision, create_pr = info.pr_url, info.pr_revision, False
            result.revision = revision
    if not batches:
        result.commit = call("reading", repo_id, lambda: api.dataset_info(repo_id, revision=base).sha, revision=base)
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Reading a published set and writing evaluations back
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PublishedSet:
    """A dataset repo pinned to one commit.

    Attributes:
        repo_id (`str`): the repo.
        revision (`str`, *optional*): the revision asked for (None = main).
        sha (`str`): the commit it resolved to; everything is read at this commit.
        config_name (`str`, *optional*): the config evaluated (None when the repo declares no configs).
        card (`DatasetCard`, *optional*): the card at `sha`.
        dsco (`dict`): the config's `dsco:` block (`{}` for sets other tools published).
    """

    repo_id: str
    revision: str | None
    sha: str
    config_name: str | None
    card: DatasetCard | None
    dsco: dict


def open_set(target: str, cfg: HubConfig, config_name: str | None = None) -> PublishedSet:
    """Resolve `USER/NAME[@REVISION]` to a commit sha and read the card there.

    Args:
        target (`str`): the repo and optional revision (branch, tag, commit sha or `refs/pr/N`).
        cfg (`HubConfig`): token and endpoint (a token is optional for public repos).
        config_name (`str`, *optional*): the config to evaluate (default: the repo's default config).

    Raises:
        HubError: malformed repo id, missing repo, missing revision (lists the branches), unknown config.
    """
    repo_id, revision = parse_set_ref(target)
    check_repo_id(repo_id, "TARGET")
    client = _connect(cfg, required=False)
    api, call = client.api, client.call

    def resolve() -> str | None:
        try:
            return api.dataset_info(repo_id, revision=revision).sha
        except RevisionNotFoundError:
            return None

    sha = call("reading", repo_id, resolve, revision=revision)
    if sha is None:
        refs = call("listing the branches of", repo_id, lambda: api.list_repo_refs(repo_id, repo_type="dataset"))
        branches = ", ".join(b.name for b in refs.branches) or "none"
        raise HubError(
            f"revision {revision!r} does not exist in datasets/{repo_id}; its branches: {branches}. "
            f"Pass one of them or a commit sha, e.g. {repo_id}@main."
        )
    found = _read_card(client, repo_id, sha)
    config_name, dsco = card.evaluated_config(found, config_name, f"datasets/{repo_id}")
    return PublishedSet(repo_id, revision, sha, config_name, found, dsco)


def update_card_eval(published: PublishedSet, block: dict, cfg: HubConfig) -> tuple[str, str | None]:
    """Write an `eval` block (with the evaluated commit) into the card of a published set and push the README.

    The card is read at the head of the target branch (`cfg.revision`, else the evaluated branch, else main), so
    commits made since the evaluated one are kept; `card.with_hub_evaluation` makes the new card.

    Args:
        published (`PublishedSet`): the evaluated set.
        block (`dict`): the `eval` block (protocol, test, result, baseline_random, commit).
        cfg (`HubConfig`): token (required), endpoint, `create_pr`, `commit_message`, `revision`.

    Returns:
        `tuple[str, str | None]`: the commit URL and the pull request URL (with `create_pr`).

    Raises:
        HubError: no token, 401/403, or the Hub kept failing.
    """
    client = _connect(cfg)
    repo_id = published.repo_id
    target = cfg.revision
    if target is None:
        target = "main"
        if published.revision and published.revision != published.sha:
            refs = client.call(
                "listing the branches of", repo_id, lambda: client.api.list_repo_refs(repo_id, repo_type="dataset")
            )
            if published.revision in {b.name for b in refs.branches}:
                target = published.revision
    current = _read_card(client, repo_id, target)
    rendered, name = card.with_hub_evaluation(current, published.config_name, block, repo_id)
    if client.token in rendered:
        raise HubError("refusing to upload README.md: the card would contain the Hub token.")
    message = cfg.commit_message or f"dsco-hub evaluation of {name} at {published.sha[:8]}"
    operations = [CommitOperationAdd("README.md", rendered.encode())]
    info = _commit(client, "updating the card of", repo_id, operations, message, target, cfg.create_pr)
    return info.commit_url, info.pr_url


@contextlib.contextmanager
def hub_session(cfg: HubConfig) -> Iterator[None]:
    """Point `datasets` and `huggingface_hub` at `cfg.endpoint` and `cfg.token` for the calls inside the block.

    Both libraries read `HF_ENDPOINT` at import time; this patches the module constants derived from it
    (`huggingface_hub.constants.ENDPOINT`, `HUGGINGFACE_CO_URL_TEMPLATE`, `datasets.config.HF_ENDPOINT`,
    `HUB_DATASETS_URL`) and sets `HF_TOKEN`, restoring everything on exit. Without `endpoint` and `token` it
    changes nothing.
    """
    import datasets.config
    from huggingface_hub import constants

    saved_env = os.environ.get("HF_TOKEN")
    patches: list[tuple[object, str, object]] = []
    if cfg.endpoint:
        endpoint = cfg.endpoint.rstrip("/")
        for module, name, value in (
            (constants, "ENDPOINT", endpoint),
            (constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
            (datasets.config, "HF_ENDPOINT", endpoint),
            (datasets.config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"),
        ):
            patches.append((module, name, getattr(module, name)))
            setattr(module, name, value)
    if cfg.token:
        os.environ["HF_TOKEN"] = cfg.token
    try:
        yield
    finally:
        for module, name, value in reversed(patches):
            setattr(module, name, value)
        if cfg.token:
            if saved_env is None:
                os.environ.pop("HF_TOKEN", None)
            else:
                os.environ["HF_TOKEN"] = saved_env
