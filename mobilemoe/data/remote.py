"""The DVC remote: configured from ``data.remote`` (+ environment), then ``dvc push``.

    from mobilemoe.data.remote import configure_remote, push
    configure_remote(root, params.data.remote)          # writes .dvc/config (no secrets)
    push(root)                                          # = dvc push to that remote

A local folder (the default, ``.dvc/store``) or ``s3://bucket/prefix`` on any
S3-compatible endpoint (``endpoint_url``). Overrides from the environment:
``MOBILEMOE_DVC_REMOTE_URL``, ``MOBILEMOE_S3_ENDPOINT_URL``. Credentials never enter the
committed ``.dvc/config``: DVC's S3 client reads ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` from the environment, and ``store_credentials=True`` copies them
into the git-ignored ``.dvc/config.local`` (``dvc remote modify --local``) for later shells.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from ..config.data import RemoteConfig
from ..errors import UserError

_SCHEME = re.compile(r"^\w+://")


class RemoteError(UserError):
    pass


def resolve_remote(root: Path, cfg: RemoteConfig, env=os.environ) -> dict:
    """{name, url, endpoint_url, kind} after environment overrides."""
    url = env.get("MOBILEMOE_DVC_REMOTE_URL") or cfg.url
    endpoint = env.get("MOBILEMOE_S3_ENDPOINT_URL") or cfg.endpoint_url
    if not url:
        raise RemoteError("data.remote.url: empty; give a folder or s3://bucket/prefix")
    if _SCHEME.match(url):
        kind = url.split("://", 1)[0]
        if kind != "s3":
            raise RemoteError(
                f"data.remote.url: {url!r}: only local folders and s3:// remotes "
                "are set up here (others: `dvc remote add` by hand)"
            )
        if "@" in url.split("://", 1)[1].split("/", 1)[0]:
            raise RemoteError(
                "data.remote.url: must not carry credentials (user:key@...); "
                "give them as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            )
    else:
        kind = "local"
        url = str((root / url).resolve()) if not os.path.isabs(url) else url
    return {"name": cfg.name, "url": url, "endpoint_url": endpoint, "kind": kind}


def configure_remote(
    root: str | os.PathLike, cfg: RemoteConfig, store_credentials: bool = False, env=os.environ
) -> dict:
    """Make ``cfg`` the project's default DVC remote; returns what was configured (no secrets)."""
    from dvc.config_schema import RelPath
    from dvc.repo import Repo

    root = Path(root).resolve()
    r = resolve_remote(root, cfg, env)
    section: dict = {"url": r["url"]}
    if r["kind"] == "local":
        Path(r["url"]).mkdir(parents=True, exist_ok=True)
        # RelPath: DVC stores it relative to .dvc/, so the committed config stays portable
        section["url"] = RelPath(r["url"])
    if r["kind"] == "s3" and r["endpoint_url"]:
        section["endpointurl"] = r["endpoint_url"]
    with contextlib.chdir(root), Repo(".") as repo:
        with repo.config.edit("repo") as conf:
            conf["remote"][r["name"]] = section
            conf["core"]["remote"] = r["name"]
        if store_credentials and r["kind"] == "s3":
            key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
            if not key or not secret:
                raise RemoteError(
                    "store_credentials: set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY in the environment first"
                )
            with repo.config.edit("local") as conf:  # .dvc/config.local, git-ignored
                conf["remote"][r["name"]] = {"access_key_id": key, "secret_access_key": secret}
    return {k: v for k, v in r.items()}


def push(root: str | os.PathLike, remote: str | None = None) -> int:
    """``dvc push`` every stage output; returns the number of files transferred."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with contextlib.chdir(Path(root).resolve()), Repo(".") as repo:
            return int(repo.push(remote=remote) or 0)
    except DvcException as e:
        raise RemoteError(
            f"dvc push failed: {e} (configure the remote with `mobilemoe data "
            "remote`; for S3 set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        ) from None


def pull(root: str | os.PathLike, remote: str | None = None, targets: list[str] | None = None) -> int:
    """``dvc pull``: fetch the outputs dvc.lock names (of ``targets``' stages: all by
    default) and check them out."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with contextlib.chdir(Path(root).resolve()), Repo(".") as repo:
            out = repo.pull(targets=targets, remote=remote)
    except DvcException as e:
        raise RemoteError(f"dvc pull failed: {e}") from None
    return int((out.get("stats") or {}).get("fetched", 0)) if isinstance(out, dict) else 0


def fetch(root: str | os.PathLike, lock: dict, cfg: RemoteConfig, stages: tuple[str, ...]) -> int:
    """Check out the data version ``lock`` (dvc.lock's content) in ``root`` from the remote
    ``cfg``: what a step on another machine does with the version its run was given. Makes
    ``root`` a DVC project if it is not one (a code package has no ``.dvc/``)."""
    import yaml
    from dvc.repo import Repo

    root = Path(root).resolve()
    if not (root / ".dvc").is_dir():
        Repo.init(str(root), no_scm=True).close()
    path = root / "dvc.lock"
    if not path.is_file() or yaml.safe_load(path.read_text()) != lock:
        path.write_text(yaml.safe_dump(lock, sort_keys=False))
    configure_remote(root, cfg)
    return pull(root, targets=list(stages))
