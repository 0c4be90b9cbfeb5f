"""``make run``: the main job on this machine, end to end, then a table of features.

Until the Flink path is the default, this is a bounded replay of the bundled
sample streams on the DirectRunner into a local Redis it starts (and stops),
followed by what the online lookup client reads back.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from pipelines import ride_features, user_features
from runners.local_redis import LocalRedis
from serving.lookup import FeatureClient

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("txn_total_5m", "clicks_in_session", "session_duration_s", "lifetime_rides",
           "rides_per_city", "amount_sum_60s")


def print_table(client: FeatureClient, users: Sequence[str]) -> None:
    """Prints one row per user: the typed features the model would get."""
    widths = [8] + [max(len(c), 14) for c in COLUMNS]
    print("  ".join(h.ljust(w) for h, w in zip(("user", *COLUMNS), widths, strict=True)))
    for view in client.get_many(users):
        cells = [view.entity_id] + [
            ("-" if f in view.defaulted else str(view.values[f]))[:24] for f in COLUMNS]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis_port", type=int, default=0, help="0: a free port")
    parser.add_argument("--out", default=str(ROOT / "out"))
    parser.add_argument("--users", type=int, default=8, help="rows in the table")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with LocalRedis(args.redis_port) as server:
        print(f"redis-server on 127.0.0.1:{server.port}")
        for name, module, sample in (
                ("user", user_features, "sample_user_events.jsonl"),
                ("ride", ride_features, "sample_ride_events.jsonl")):
            started = time.monotonic()
            module.main([
                "--runner=DirectRunner", f"--input={ROOT / 'data' / sample}",
                f"--redis_url={server.url}", f"--feature_log={out / f'{name}_updates.jsonl'}",
                f"--dead_letter={out / f'{name}_dead_letters.jsonl'}",
                f"--late_output={out / f'{name}_late.jsonl'}"])
            print(f"{name} pipeline: {time.monotonic() - started:.1f}s; outputs in {out}/")
        client = FeatureClient(server.client())
        keys = sorted(k.decode().split(":", 2)[2] for k in server.client().scan_iter(
            "features:user:*"))
        print_table(client, keys[: args.users])


if __name__ == "__main__":
    main()
