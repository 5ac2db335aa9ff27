"""
Run the whole pipeline on the sample configuration and show the result.

C{python -m replayforge.demo} starts the relay, the proxy and the player of
C{conf/} (loopback ports, SQLite files under C{run/}), sends the sample
webhooks of C{conf/samples/} and a burst of generated orders through the
proxy, waits for the player to store them, and prints what arrived in its
database.  With C{--keep} the daemons stay up for you to explore.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from replayforge.launch import Daemon, DaemonFailed, endpoint_url
from replayforge.player.config import load_player_config
from replayforge.proxy.config import load_proxy_config
from replayforge.relay.config import load_relay_config


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        return int(answer.status)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()  # noqa: S310
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310
        return json.loads(answer.read())


def send_samples(proxy_url: str, samples: Path, orders: int) -> dict[str, int]:
    """Send every sample and C{orders} generated orders; count per table."""
    expected: dict[str, int] = {}
    for path in sorted(samples.glob("*.json")):
        sample = json.loads(path.read_text(encoding="utf-8"))
        body = json.dumps(sample["body"]).encode("utf-8")
        _post(proxy_url.rstrip("/") + sample["path"], body, sample["headers"])
        table = sample["path"].rsplit("/", 1)[-1]
        expected[table] = expected.get(table, 0) + 1
    for number in range(1, orders + 1):
        order = {
            "id": 900_000 + number,
            "email": f"customer{number}@example.com",
            "total_price": f"{number % 97 + 3}.50",
            "currency": "EUR",
            "line_items": [{"sku": f"SKU-{number % 13}", "quantity": number % 3 + 1}],
        }
        _post(
            proxy_url.rstrip("/") + "/hooks/shop",
            json.dumps(order).encode("utf-8"),
            {"Content-Type": "application/json", "X-Event-Type": "orders/create"},
        )
    expected["shop"] = expected.get("shop", 0) + orders
    _post(proxy_url.rstrip("/") + "/healthz", b"", {})
    return expected


def wait_for_rows(
    api_url: str, expected: dict[str, int], timeout: float
) -> dict[str, list[dict[str, Any]]]:
    """Poll the player's db API until every table holds its rows."""
    deadline = time.monotonic() + timeout
    rows: dict[str, list[dict[str, Any]]] = {}
    while time.monotonic() < deadline:
        for table in expected:
            try:
                rows[table] = _get_json(f"{api_url}rpf-db/{table}?limit=10000")
            except urllib.error.HTTPError as error:
                if error.code != 404:
                    # 404: the table does not exist yet; anything else is a bug.
                    raise DaemonFailed(
                        f"the player's API answered {error.code} for {table}: "
                        + error.read().decode("utf-8", "replace")
                    ) from None
                rows[table] = []
            except OSError:
                rows[table] = []
        if all(len(rows[table]) >= count for table, count in expected.items()):
            return rows
        time.sleep(0.3)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--conf", type=Path, default=Path("conf"))
    parser.add_argument("--orders", type=int, default=500)
    parser.add_argument("--keep", action="store_true", help="leave daemons running")
    options = parser.parse_args(argv)

    root = Path.cwd()
    conf = options.conf
    state = root / "run"
    relay_config = load_relay_config(conf / "relay.yaml")
    proxy_config = load_proxy_config(conf / "proxy.yaml")
    player_config = load_player_config(conf / "player.yaml")
    logs = state / "logs"

    daemons = {
        kind: Daemon(kind, conf / f"{kind}.yaml", root, log_dir=logs)
        for kind in ("relay", "proxy", "player")
    }
    ready = {
        "relay": endpoint_url(relay_config.listen_status or relay_config.listen),
        "proxy": endpoint_url(proxy_config.listen_status or ""),
        "player": endpoint_url(player_config.listen_status or ""),
    }
    source = proxy_config.sources[0]
    proxy_url = endpoint_url(source.listen or "")
    sink_id = player_config.sinks[0].id
    api_url = endpoint_url(player_config.listen or "", f"/{sink_id}/")

    busy = [url for url in ready.values() if _answers(url)]
    if busy:
        print(
            f"demo: something already listens at {', '.join(busy)}; stop the "
            "daemons of an earlier --keep run first",
            file=sys.stderr,
        )
        return 1
    # Rows of an earlier run would make this one look complete.
    shutil.rmtree(state, ignore_errors=True)

    try:
        for kind, daemon in daemons.items():
            print(f"starting {kind} (log: {daemon.log_path.relative_to(root)})")
            daemon.start()
            daemon.wait_until_ready(ready[kind])
        print(f"sending the samples of {conf / 'samples'} and {options.orders} orders")
        started = time.monotonic()
        expected = send_samples(proxy_url, conf / "samples", options.orders)
        rows = wait_for_rows(api_url, expected, timeout=60)
        elapsed = time.monotonic() - started
    except DaemonFailed as error:
        print(f"demo failed: {error}", file=sys.stderr)
        for daemon in daemons.values():
            daemon.stop()
        return 1

    print(f"\nin the player's database after {elapsed:.1f}s ({api_url}):")
    complete = True
    for table, count in sorted(expected.items()):
        found = len(rows.get(table, []))
        complete = complete and found >= count
        print(f"  table {table:<8} {found:>5} rows (sent {count})")
    example = (rows.get("github") or [{}])[0]
    print("\nthe github push, as stored:")
    print("  " + json.dumps(example, indent=2)[:900].replace("\n", "\n  "))

    if options.keep:
        pids = ", ".join(f"{kind} {daemon.pid}" for kind, daemon in daemons.items())
        print(f"\ndaemons left running ({pids}); try: curl {api_url}rpf-db/shop")
    else:
        for daemon in daemons.values():
            daemon.stop()
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
