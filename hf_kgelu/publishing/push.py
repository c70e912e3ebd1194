"""Uploading a finished model folder to the Hub. A failure keeps the local folder and raises
`HubPushError` with the exact command to retry; the token never appears in it."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path


class HubPushError(RuntimeError):
    """The upload failed; the local folder is intact and `retry_command` uploads it again."""

    def __init__(self, message: str, *, folder: Path, repo_id: str, retry_command: str, status_code: int | None):
        super().__init__(message)
        self.folder, self.repo_id, self.retry_command, self.status_code = folder, repo_id, retry_command, status_code


def retry_command(folder: str | os.PathLike, repo_id: str, *, private: bool = False, endpoint: str | None = None) -> str:
    """The shell command that uploads `folder` again (credentials from `hf auth login` or HF_TOKEN)."""
    prefix = f"HF_ENDPOINT={shlex.quote(endpoint)} " if endpoint else ""
    private_flag = " --private" if private else ""
    return f"{prefix}hf upload {shlex.quote(repo_id)} {shlex.quote(str(folder))} . --repo-type model{private_flag}"


def _scrub(text: str, secrets: Sequence[str | None]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _failure_message(error: Exception, status: int | None, repo_id: str, endpoint: str) -> str:
    name = type(error).__name__
    if name == "OfflineModeIsEnabled":
        return "offline mode is enabled (HF_HUB_OFFLINE=1): unset it to upload"
    if status in (401, 403):
        return (f"the Hub refused the credentials (HTTP {status}): the token is missing, invalid, or cannot write to "
                f"{repo_id!r}. Log in with `hf auth login` or set HF_TOKEN to a token with write access")
    if status is not None and status >= 500:
        return f"the Hub had a server error (HTTP {status}); nothing is wrong with the model, try again later"
    if status is not None:
        return f"the Hub rejected the upload (HTTP {status})"
    if "Connect" in name or "Timeout" in name or "Network" in name:
        return f"could not reach {endpoint} (no network?)"
    return "the upload failed"


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str = "Upload ReLU-ized model (hf-kgelu)",
) -> str:
    """Create `repo_id` (if needed) and upload a model folder written by `hf_kgelu.checkpoint`; returns
    the repo URL. The folder is uploaded as it is (its card already names `repo_id` when the flow
    knew it would push there).

    `token` defaults to huggingface_hub's own lookup (HF_TOKEN, then `hf auth login`); `endpoint`
    to HF_ENDPOINT. Any failure raises `HubPushError`, which keeps the folder and gives the
    retry command; the token is never part of it.
    """
    from huggingface_hub import HfApi

    folder = Path(folder).expanduser().absolute()
    missing = [name for name in ("config.json", "README.md") if not (folder / name).is_file()]
    if not folder.is_dir() or missing or not list(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} is not a complete model folder (missing {', '.join(missing) or 'weights'}): "
                         "write it with hf_kgelu.checkpoint first")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model", commit_message=commit_message)
    except Exception as error:
        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None)
        command = retry_command(folder, repo_id, private=private, endpoint=endpoint)
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        message = (
            f"pushing {folder} to {repo_id!r} failed: {_failure_message(error, status, repo_id, api.endpoint)}.\n"
            f"The local folder is complete and untouched: {folder}\n"
            f"Retry with:\n  {command}\n"
            f"or from Python: hf_kgelu.push_folder({str(folder)!r}, {repo_id!r})\n"
            f"(cause: {type(error).__name__}: {detail})"
        )
        raise HubPushError(
            _scrub(message, [token, os.environ.get("HF_TOKEN")]), folder=folder, repo_id=repo_id,
            retry_command=command, status_code=status,
        ) from None
    return f"{api.endpoint.rstrip('/')}/{repo_id}"
