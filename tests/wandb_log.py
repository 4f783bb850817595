"""Read what an offline W&B run wrote, without the network or wandb's internal reader.

An offline run's ``run-<id>.wandb`` file is a W&B header (``:W&B``, magic 0xBEE1, version)
followed by a LevelDB-style log: 32 KiB blocks of records, each ``crc32 (4) | length (2) |
type (1) | data`` with types FULL=1, FIRST=2, MIDDLE=3, LAST=4; each data is a protobuf
``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, chunks, pending = HEADER, [], b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0:
            pos += left_in_block
            continue
        if pos + HEADER + length > len(data):  # wandb-core is still writing this record
            break
        payload = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            chunks.append(payload)
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            chunks.append(pending + payload)
            pending = b""
    records = []
    for chunk in chunks:
        record = pb.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def history(path: str | Path) -> list[dict]:
    """The logged rows (``run.log`` calls) as dicts of decoded JSON values."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def summary(path: str | Path) -> dict:
    """The run summary as the log leaves it (later updates win)."""
    values = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                values[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return values


def config(path: str | Path) -> dict:
    """The run's config as W&B stored it: every ``config`` record's updates applied in order
    (values decoded from JSON, nested dicts as logged), removals dropped; ``_wandb`` left out."""
    values: dict = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                values[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
            for item in record.config.remove:
                values.pop(item.key or "/".join(item.nested_key), None)
    values.pop("_wandb", None)
    return values


def run_info(path: str | Path) -> dict:
    """The run record's id, display name, group, job type and tags."""
    for record in read_records(path):
        if record.WhichOneof("record_type") == "run":
            run = record.run
            return {"id": run.run_id, "name": run.display_name, "group": run.run_group,
                    "job_type": run.job_type, "tags": list(run.tags)}
    raise ValueError(f"{path} holds no run record")


def metric_definitions(path: str | Path) -> dict[str, str]:
    """``define_metric`` calls: metric name (or glob) -> its step metric ("" for none)."""
    return {r.metric.name or r.metric.glob_name: r.metric.step_metric
            for r in read_records(path) if r.WhichOneof("record_type") == "metric"}


def config_keys(path: str | Path) -> set[str]:
    keys: set[str] = set()
    for record in read_records(path):
        if record.WhichOneof("record_type") == "config":
            keys |= {u.key or "/".join(u.nested_key) for u in record.config.update}
    return keys


def wait_for_run_log(wandb_dir: str | Path, timeout: float = 60.0) -> Path:
    """Path of the offline run's ``run-*.wandb`` once complete.

    wandb-core creates and writes the log asynchronously after ``run.finish()`` returns: wait for
    the file and for its ``exit`` record, which it writes last.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        logs = sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb"))
        if logs and any(r.WhichOneof("record_type") == "exit" for r in read_records(logs[-1])):
            return logs[-1]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no complete offline run log under {wandb_dir} after {timeout}s")
        time.sleep(0.2)
