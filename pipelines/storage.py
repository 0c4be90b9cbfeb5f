"""Google Cloud Storage through Beam's filesystem, and the local emulator.

Beam reads and writes ``gs://`` paths with the ``google-cloud-storage``
client, which talks to ``STORAGE_EMULATOR_HOST`` when that is set (an
emulator such as ``gcp-storage-emulator``, which the tests run). With no
Google credentials on the machine Beam first searches for them with retries
(about 20 s per process) before it connects anonymously; against an
emulator there are none to find, so ``use_emulator_if_set`` skips the search.
"""

from __future__ import annotations

import os

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


def use_emulator_if_set() -> bool:
    """With ``STORAGE_EMULATOR_HOST`` set, GCS clients connect anonymously at once."""
    if not os.environ.get(EMULATOR_ENV):
        return False
    from apache_beam.internal.gcp import auth

    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials = None
        auth._Credentials._credentials_init = True
    return True
