"""Output folders the CLIs write into: made, or refused with one clear message."""

import os


def writable_folder(path: str, flag: str) -> None:
  """Creates folder `path` if needed and checks that it can be written.

  Args:
    flag: how the user named it (e.g. '--out-dir'), for the message.

  Raises:
    ValueError: `path` is a file, cannot be created, or cannot be written.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"{flag} {path} exists and is not a folder")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create {flag} {path}: {e.strerror}") from None
  if not os.access(path, os.W_OK):
    raise ValueError(f"{flag} {path} cannot be written (permission denied or read-only)")
