"""What dsco-hub shows of what the user typed: the command line with its secrets masked, and did-you-mean hints.

`command_line` is what `dsco_config.json`, the dataset card and the prior's and teacher's model cards record as the
command that made them; `closest` picks the names an error message suggests. Both are used by several modules and
depend on none.
"""

from __future__ import annotations

import difflib
import shlex
import sys
from collections.abc import Callable, Sequence

SECRET_OPTIONS = ("--token",)  # options whose value never reaches a file, a card or a log
MASK = "REDACTED"


def command_line(argv: Sequence[str] | None = None, program: str = "dsco-hub") -> str:
    """The command as typed, shell-quoted, with the value of every secret option (`--token`) masked.

    Both spellings are masked: `--token VALUE` becomes `--token REDACTED`, `--token=VALUE` becomes
    `--token=REDACTED`.

    Args:
        argv (sequence of `str`, *optional*, defaults to `sys.argv[1:]`): the arguments after the program name.
        program (`str`, *optional*, defaults to "dsco-hub"): the program name the line starts with.

    Returns:
        `str`: e.g. `dsco-hub concentrate ./src --push --token REDACTED`, every argument quoted as `shlex.quote`
        does (the line can be pasted back into a shell).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    masked = []
    for i, arg in enumerate(args):
        if i > 0 and args[i - 1] in SECRET_OPTIONS:
            masked.append(MASK)
        elif arg.startswith(tuple(f"{option}=" for option in SECRET_OPTIONS)):
            masked.append(f"{arg.split('=', 1)[0]}={MASK}")
        else:
            masked.append(arg)
    return " ".join(shlex.quote(a) for a in [program, *masked])


def closest(
    name: str, candidates: Sequence[str], n: int = 3, spellings: Callable[[str], Sequence[str]] | None = None
) -> list[str]:
    """The `n` candidates most similar to `name`, for "did you mean" hints in error messages.

    Similarity is `difflib.SequenceMatcher(None, name, spelling).ratio()` in `[0, 1]`, taken as the best over the
    candidate's spellings (e.g. the comma-separated synonyms of an ImageNet label). Every candidate is ranked, even
    a dissimilar one, so the hint is never empty while there are candidates.

    Args:
        name (`str`): what the user typed (compared as given: lower-case it first for a case-blind match).
        candidates (sequence of `str`): the valid names.
        n (`int`, *optional*, defaults to 3): how many to return.
        spellings (`callable`, *optional*): a candidate's spellings; defaults to the candidate itself. A candidate
            without spellings scores as the empty string does.

    Returns:
        `list[str]`: at most `n` candidates, most similar first; equally similar ones keep the order of
        `candidates`.
    """
    scores = {
        candidate: max(
            difflib.SequenceMatcher(None, name, spelling).ratio()
            for spelling in (spellings(candidate) if spellings else [candidate]) or [""]
        )
        for candidate in candidates
    }
    return sorted(scores, key=lambda candidate: -scores[candidate])[:n]
