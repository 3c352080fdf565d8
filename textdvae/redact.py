"""What of a recipe may be published: the recipe with credentials dropped and local paths made relative.

A recipe goes out with a model, as ``final/recipe.yaml`` and in the model card. ``data.load_options`` is where a
user puts ``token=`` or ``storage_options: {key, secret}``, and paths name the user's folders, so
:func:`public_recipe` builds what a reader needs from it:

* a key that names a credential (see :func:`is_credential_key`), at any depth of mappings and lists, is dropped
  with its value;
* ``scheme://user:password@host`` in any string loses its ``user:password@``;
* an absolute local path (``/...``, ``~...``, ``C:\\...``) becomes relative to the run folder when it lies inside
  it, else its last component (the file name), which says what the file was without saying where it lived.

The local ``output_dir/config.yaml`` keeps the recipe as given: it is what resumes the run. Experiment trackers get
the recipe through :func:`without_credentials` (local paths kept).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

# the last word of a key that holds a credential (token, hf_token, api_key, access_key, ...)
_CREDENTIAL_LAST = {"token", "secret", "password", "passwd", "pwd", "key", "apikey", "credential", "credentials",
                    "auth", "authorization", "cookie", "cookies"}
# words that mark a credential wherever they stand in a key (secret_access_key_id, password_file, ...)
_CREDENTIAL_ANY = {"secret", "password", "passwd", "credential", "credentials", "apikey"}
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@]+@")
_WINDOWS_ABSOLUTE = re.compile(r"^[A-Za-z]:[\\/]")


def is_credential_key(key: Any) -> bool:
    """``token``, ``hf_token``, ``api_key``, ``aws_secret_access_key``, ``Password`` ... (case-insensitive, split
    at ``_``, ``-``, ``.`` and camelCase); ``pad_token_id`` and ``tokenizer`` are not."""
    words = [w.lower() for w in re.split(r"[_\-.\s]+|(?<=[a-z])(?=[A-Z])", str(key)) if w]
    return bool(words) and (words[-1] in _CREDENTIAL_LAST or any(w in _CREDENTIAL_ANY for w in words))


def public_recipe(raw: dict[str, Any], run_dir: str | Path | None = None) -> dict[str, Any]:
    """A copy of ``raw`` fit to publish (module docstring); ``run_dir`` is the run's output folder."""
    root = Path(run_dir).expanduser().resolve() if run_dir is not None else None
    out = _scrub(raw, root)
    if isinstance(raw.get("output_dir"), str):  # the run folder itself: its name only
        out["output_dir"] = Path(raw["output_dir"]).name or raw["output_dir"]
    return out


def without_credentials(value: Any) -> Any:
    """A copy of a mapping/list/str with only the credentials dropped (for experiment trackers, which upload the
    hyperparameters but may keep local paths)."""
    if isinstance(value, dict):
        return {k: without_credentials(v) for k, v in value.items() if not is_credential_key(k)}
    if isinstance(value, (list, tuple)):
        return [without_credentials(v) for v in value]
    return _URL_USERINFO.sub(r"\1", value) if isinstance(value, str) else value


def _scrub(value: Any, root: Path | None) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v, root) for k, v in value.items() if not is_credential_key(k)}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, root) for v in value]
    if isinstance(value, str):
        return _local_path(_URL_USERINFO.sub(r"\1", value), root)
    return value


def _local_path(text: str, root: Path | None) -> str:
    """An absolute local path -> relative to ``root`` when inside it, else its last component; other text as is."""
    if _WINDOWS_ABSOLUTE.match(text):
        return PureWindowsPath(text).name or text
    if not text.startswith(("/", "~")):
        return text
    path = Path(text).expanduser()
    if root is not None:
        try:
            return PurePosixPath(path.resolve().relative_to(root)).as_posix()
        except ValueError:
            pass
    return path.name or text
