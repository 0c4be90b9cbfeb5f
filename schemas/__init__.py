"""Avro schemas of the events rtfeatures reads, and the local schema catalogue.

The catalogue maps Confluent schema ids to the ``.avsc`` files beside this
module; it stands in for a schema registry when none is configured.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

SCHEMA_DIR = Path(__file__).resolve().parent

USER_EVENT_V1 = "user_interaction_event_v1.avsc"
USER_EVENT_V2 = "user_interaction_event_v2.avsc"
RIDE_EVENT = "ride_event.avsc"


@cache
def load_schema(filename: str) -> dict[str, Any]:
    """Returns the parsed (fastavro) schema stored in ``schemas/<filename>``."""
    with open(SCHEMA_DIR / filename, encoding="utf-8") as f:
        raw = json.load(f)
    # _write_hint=False keeps the parsed form comparable across readers.
    return fastavro.parse_schema(raw, _write_hint=False)


@cache
def raw_schema(filename: str) -> dict[str, Any]:
    """Returns the schema as written in the .avsc file (plain JSON)."""
    with open(SCHEMA_DIR / filename, encoding="utf-8") as f:
        return json.load(f)


@cache
def catalogue() -> dict[int, str]:
    """Returns the local catalogue: schema id -> .avsc file name."""
    with open(SCHEMA_DIR / "catalogue.json", encoding="utf-8") as f:
        entries = json.load(f)["schemas"]
    return {int(schema_id): filename for schema_id, filename in entries.items()}


def schema_id_for(filename: str) -> int:
    """Returns the catalogue id of a schema file (the id producers embed)."""
    for schema_id, name in catalogue().items():
        if name == filename:
            return schema_id
    raise KeyError(f"schema {filename!r} is not in schemas/catalogue.json")
