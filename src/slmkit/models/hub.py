"""Models from the Hugging Face hub: `org/name[@revision]` references, the local cache, `slm pull`.

A hub model lives in the normal Hugging Face cache (`HF_HOME` / `HF_HUB_CACHE`), shared with
transformers and every other tool. Once it is there, every command uses the cached folder, online
or with `HF_HUB_OFFLINE=1`; online, a command that needs a model that is not cached yet downloads
it first, as `slm pull` does (progress, resume of an interrupted download).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from slmkit.errors import ModelNotFoundError

HUB_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
# what a causal LM needs; weights as safetensors, else the PyTorch .bin files
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "*.safetensors",
    "*.safetensors.index.json",
)
BIN_WEIGHTS = ("*.bin", "*.bin.index.json")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_hub_ref(text: str) -> HubRef | None:
    """`org/name` or `org/name@revision`, else None."""
    match = HUB_REF.match(text.strip())
    if match is None:
        return None
    return HubRef(match["repo"], match["revision"])


def cache_dir() -> str | None:
    """The hub cache as the environment says now (`HF_HUB_CACHE`, else `HF_HOME/hub`); None for
    the library's default. Read at each call: the hub client reads it once, at import."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_snapshot(ref: HubRef) -> Path | None:
    """The cached snapshot folder of `ref` (with its config.json), or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(
            snapshot_download(
                ref.repo_id,
                revision=ref.revision,
                local_files_only=True,
                allow_patterns=["config.json"],
                cache_dir=cache_dir(),
            )
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return folder if (folder / "config.json").is_file() else None


def not_cached_error(ref: HubRef) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{ref} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 keeps the hub away",
        hint=f"run `slm pull {ref}` where the hub is reachable, or use a local folder",
    )


def pull(ref: HubRef, *, token: str | None = None) -> Path:
    """Download (or complete) `ref` into the Hugging Face cache; returns the snapshot folder."""
    if offline():
        raise ModelNotFoundError(
            f"cannot download {ref}: HF_HUB_OFFLINE=1", hint="unset HF_HUB_OFFLINE to download"
        )
    from huggingface_hub import HfApi, snapshot_download

    token = token or os.environ.get("HF_TOKEN") or None
    try:
        info = HfApi().model_info(ref.repo_id, revision=ref.revision, token=token)
        names = [s.rfilename for s in info.siblings or []]
        patterns = list(MODEL_FILES)
        if not any(n.endswith(".safetensors") for n in names):
            patterns += BIN_WEIGHTS
        resume_partials(ref, info.sha or "", token)
        folder = snapshot_download(
            ref.repo_id,
            revision=ref.revision,  # a branch name: the cache records where it points
            allow_patterns=patterns,
            token=token,
            cache_dir=cache_dir(),
        )
    except Exception as exc:
        raise hub_error(ref, exc) from exc
    return Path(folder)


def resume_partials(ref: HubRef, sha: str, token: str | None) -> None:
    """Finish the files an interrupted download left half-written in the cache.

    The hub client writes each file to a temporary `<etag>.<random>.incomplete` beside the cache's
    blobs and starts afresh in a new process; so the largest partial of each file is continued here
    with an HTTP range request and moved in place, and the client then finds the file complete."""
    from huggingface_hub import HfApi, constants, hf_hub_url
    from huggingface_hub.hf_api import RepoFile

    root = Path(cache_dir() or constants.HF_HUB_CACHE)
    blobs = root / f"models--{ref.repo_id.replace('/', '--')}" / "blobs"
    partials = sorted(blobs.glob("*.incomplete"), key=lambda p: p.stat().st_size, reverse=True)
    if not partials or not sha:
        return
    files = {}
    for entry in HfApi().list_repo_tree(ref.repo_id, revision=sha, recursive=True, token=token):
        if isinstance(entry, RepoFile):
            etag = entry.lfs.sha256 if entry.lfs is not None else entry.blob_id
            files[etag] = (entry.path, entry.lfs.size if entry.lfs is not None else entry.size)
    done: set[str] = set()
    for partial in partials:
        etag = partial.name.split(".", 1)[0]
        if etag in done or etag not in files or (blobs / etag).exists():
            partial.unlink(missing_ok=True)  # a shorter copy, or a file that is no longer wanted
            continue
        path, size = files[etag]
        url = hf_hub_url(ref.repo_id, path, revision=sha)
        _continue_download(url, partial, size, token)
        partial.rename(blobs / etag)
        done.add(etag)


def _continue_download(url: str, partial: Path, size: int, token: str | None) -> None:
    """Append the rest of `url` to `partial` (a range request), with a progress bar."""
    import httpx
    from huggingface_hub.utils import tqdm

    have = partial.stat().st_size
    headers = {"Range": f"bytes={have}-"} if have else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=60) as response:
        response.raise_for_status()
        mode = "ab" if response.status_code == 206 else "wb"  # 200: the server sent it all
        start = have if mode == "ab" else 0
        name = url.rsplit("/", 1)[-1]
        with (
            partial.open(mode) as out,
            tqdm(
                total=size, initial=start, unit="B", unit_scale=True, desc=f"{name} (resumed)"
            ) as bar,
        ):
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    if partial.stat().st_size != size:
        raise OSError(f"{name}: got {partial.stat().st_size} of {size} bytes")


def hub_error(ref: HubRef, exc: BaseException) -> ModelNotFoundError:
    """One line for what went wrong talking to the hub, with what to do about it."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return ModelNotFoundError(
            f"{ref.repo_id} is a gated model: its licence must be accepted on its hub page first",
            hint="accept it with your account there, then set HF_TOKEN to a read token of that "
            f"account and run `slm pull {ref}` again",
        )
    if isinstance(exc, RevisionNotFoundError):
        return ModelNotFoundError(f"{ref.repo_id} has no revision {ref.revision!r}")
    if isinstance(exc, RepositoryNotFoundError):
        return ModelNotFoundError(
            f"no model {ref.repo_id!r} on the hub",
            hint="check the spelling; a private model needs HF_TOKEN",
        )
    return ModelNotFoundError(
        f"cannot download {ref} from the hub: {_first_line(exc)}",
        hint="check the network (a proxy needs HTTPS_PROXY); run `slm pull` again to resume",
    )


def resolve_hub(ref: HubRef, *, prepare: bool) -> Path | str:
    """The local folder of a hub model: cached, or downloaded now when online and `prepare`."""
    cached = cached_snapshot(ref)
    if cached is not None:
        return cached
    if not prepare:
        return ref.repo_id
    if offline():
        raise not_cached_error(ref)
    from slmkit.console import info

    info(f"{ref} is not cached yet: downloading it (as `slm pull {ref}` does)")
    return pull(ref)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
