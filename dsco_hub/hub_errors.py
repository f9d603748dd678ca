"""How a Hub call fails: which failures are retried, and the one-line `HubError` each becomes.

`hub` makes every Hub call through a `Caller`. What `huggingface_hub` (2.4) already retries is not retried again:
its `http_backoff` (`huggingface_hub/utils/_http.py`: 408, 429, 500, 502, 503, 504 and dropped or timed-out
connections, up to 5 retries, waiting `Retry-After` seconds + 1 or a doubling backoff) serves the preupload call
(`_commit_api._fetch_upload_modes`), the LFS batch, upload and completion calls (`lfs.py`), paginated listings
such as `list_repo_tree` (`utils/_pagination.py`) and the metadata request of `hf_hub_download`
(`file_download.py`, retried once more with `retry_on_errors=True` when nothing is cached). The calls it sends
once are retried here (`retry=True`) on 429, 5xx and dropped connections, with exponential backoff honouring
`Retry-After` (seconds, or an HTTP date, which the library does not read): the commit itself (`_send_commit`
posts with `get_session().post` unless `retry_on_error`, which `HfApi.create_commit` does not set), `create_repo`,
`create_branch`, `whoami`, `dataset_info`, `list_repo_refs` and `update_repo_settings`.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from dsco_hub.config import HubConfig
from dsco_hub.errors import HubError

logger = logging.getLogger("dsco_hub.hub")
LOGIN_HINT = "log in with `hf auth login` (or `huggingface-cli login`), set HF_TOKEN, or pass --token"


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of the HTTP client `huggingface_hub` uses (retried like 5xx)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()


def endpoint(cfg: HubConfig) -> str:
    """The Hub's address: `cfg.endpoint`, else `HF_ENDPOINT` (without a trailing slash)."""
    from huggingface_hub import constants

    return (cfg.endpoint or constants.ENDPOINT).rstrip("/")


def _scrub(text: str, token: str | None) -> str:
    """`text` on one line, without the token."""
    text = " ".join(str(text).split())
    return text.replace(token, "***") if token else text


def _find(err: BaseException | None, types) -> BaseException | None:
    """The first exception of `types` in the chain of `err` (clients wrap errors, e.g. LFS uploads in RuntimeError)."""
    for _ in range(10):
        if err is None or isinstance(err, types):
            return err
        err = err.__cause__ or err.__context__
    return None


def _status(err: HfHubHTTPError) -> int | None:
    return err.response.status_code if getattr(err, "response", None) is not None else None


def _tries(attempts: int | None) -> str:
    """How often a failed call was made: counted here, or left to huggingface_hub's own retries (None)."""
    return f"{attempts} attempts" if attempts is not None else "after huggingface_hub's retries"


def hub_error(
    err: HfHubHTTPError,
    what: str,
    repo_id: str | None,
    cfg: HubConfig,
    token: str | None,
    attempts: int | None = 1,
    revision: str | None = None,
) -> HubError:
    """A one-line `HubError` for a failed Hub call: what failed, on which repo, and how to fix it (never the token).

    Args:
        err (`HfHubHTTPError`): the client's error.
        what (`str`): the operation, e.g. "uploading to".
        repo_id (`str`, *optional*): the repo concerned.
        cfg (`HubConfig`): for the endpoint.
        token (`str`, *optional*): the token in use (only to scrub it from server messages).
        attempts (`int`, *optional*, defaults to 1): how many times the call was made; None for a call that
            `huggingface_hub` retried itself.
        revision (`str`, *optional*): the revision asked for, named when it does not exist.
    """
    status = _status(err)
    where = f"datasets/{repo_id}" if repo_id else endpoint(cfg)
    if isinstance(err, RevisionNotFoundError):
        return HubError(
            f"revision {revision!r} does not exist in {where}; pass an existing branch, tag or commit sha "
            f"(e.g. {repo_id}@main)."
        )
    if status == 401 and token:
        return HubError(f"the Hub rejected the token (HTTP 401) while {what} {where}; {LOGIN_HINT}.")
    if isinstance(err, RepositoryNotFoundError) or (status in (401, 404) and not isinstance(err, EntryNotFoundError)):
        return HubError(
            f"{where} does not exist on {endpoint(cfg)} or is private; check the repo id, or {LOGIN_HINT} "
            "with a token that can read it."
        )
    if status == 403:
        return HubError(
            f"the token has no write access to {where} (HTTP 403) while {what} it; use a token with write "
            "permission for that namespace (https://huggingface.co/settings/tokens) or a --repo-id under your user."
        )
    if status == 429:
        return HubError(
            f"the Hub rate-limited {what} {where} (HTTP 429, {_tries(attempts)}); wait a few minutes and rerun "
            "the same command: it uploads only what is missing."
        )
    if status is not None and status >= 500:
        return HubError(
            f"the Hub failed while {what} {where} (HTTP {status}, {_tries(attempts)}); rerun the same command: "
            "it uploads only what is missing."
        )
    detail = _scrub(getattr(err, "server_message", None) or str(err).split("\n")[0], token)
    return HubError(f"{what} {where} failed (HTTP {status}): {detail}")


def _retry_after(err: HfHubHTTPError) -> float | None:
    """Seconds asked by the server's `Retry-After` header (delay-seconds or HTTP-date), if any."""
    response = getattr(err, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class Caller:
    """Runs Hub calls and turns failures into one-line `HubError`s; retries (429, 5xx, dropped connections) only
    the calls `huggingface_hub` sends once, as the module docstring lists them."""

    cfg: HubConfig
    token: str | None
    sleep: Callable[[float], None] = time.sleep

    def __call__(self, what: str, repo_id: str | None, fn: Callable, revision: str | None = None, retry: bool = True):
        """`fn()`, retried (when `retry`) up to `cfg.max_retries` times, waiting `Retry-After` or `cfg.retry_wait`
        doubled at each retry.

        Args:
            what (`str`): the operation, as messages name it (e.g. "uploading to").
            repo_id (`str`, *optional*): the repo concerned (None: the Hub itself, e.g. `whoami`).
            fn (`Callable`): the call.
            revision (`str`, *optional*): the revision asked for, named when it does not exist.
            retry (`bool`, *optional*, defaults to True): False for calls `huggingface_hub` retries itself.

        Returns:
            What `fn` returns.

        Raises:
            HubError: the call failed (HTTP error or no connection) and is not retried, or failed after the last
                retry, or the server asks to wait longer than `cfg.max_wait`; one line, never the token.
        """
        attempt = 0
        while True:
            try:
                return fn()
            except HubError:
                raise
            except Exception as exc:  # sorted below: an HTTP status, a connection error, or anything else (re-raised)
                http = _find(exc, HfHubHTTPError)
                status = _status(http) if http is not None else None
                cause = _find(exc, TRANSPORT_ERRORS) if http is None else None
                if http is None and cause is None:
                    raise
                retryable = cause is not None or status == 429 or (status is not None and status >= 500)
                if not (retry and retryable) or attempt >= self.cfg.max_retries:
                    attempts = attempt + 1 if retry else None
                    if cause is not None:
                        raise HubError(
                            f"cannot reach {endpoint(self.cfg)} while {what} "
                            f"{'datasets/' + repo_id if repo_id else 'the Hub'} ({type(cause).__name__}, "
                            f"{_tries(attempts)}); check your connection and --endpoint / HF_ENDPOINT, then rerun."
                        ) from exc
                    raise hub_error(http, what, repo_id, self.cfg, self.token, attempts, revision) from exc
                wait = _retry_after(http) if http is not None else None
                if wait is None:
                    wait = self.cfg.retry_wait * 2**attempt
                where = f"datasets/{repo_id}" if repo_id else "the Hub"
                if wait > self.cfg.max_wait:
                    raise HubError(
                        f"the Hub asks to wait {wait:.0f} s (HTTP {status}) before {what} {where}; "
                        "rerun the same command later: it uploads only what is missing."
                    ) from exc
                reason = f"HTTP {status}" if status is not None else type(cause).__name__
                logger.warning(
                    "%s %s: %s, retrying in %.1f s (%d/%d)",
                    what,
                    repo_id or "the Hub",
                    reason,
                    wait,
                    attempt + 1,
                    self.cfg.max_retries,
                )
                self.sleep(wait)
                attempt += 1
