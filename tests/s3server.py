"""A real S3-compatible server for tests: moto's standalone server on loopback.

One server process per test session, a fresh bucket per test; the environment
points the standard AWS variables at it, as a user would for MinIO or R2. Tests
check what landed with boto3 (moto's own dependency), a different client from
the one the runner uses.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

_LISTENING = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")


@dataclass
class Bucket:
    """A bucket on the test server, with a boto3 client to look inside it."""

    name: str
    endpoint: str
    env: dict[str, str]
    client: Any

    def url(self, prefix: str = "run") -> str:
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"

    def keys(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        for page in pages:
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
        return body

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """`python -m moto.server` on 127.0.0.1, a free port; stopped after the session."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    port = None
    for line in proc.stderr:
        found = _LISTENING.search(line)
        if found:
            port = found.group(1)
            break
    if port is None:
        proc.kill()
        code = proc.wait()
        proc.stderr.close()
        raise RuntimeError(f"moto server did not start (exit {code})")
    # keep reading its request log so a full pipe never blocks the server
    stderr = proc.stderr
    drain = threading.Thread(target=lambda: stderr.read(), daemon=True)
    drain.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        drain.join(10)
        stderr.close()


@pytest.fixture
def s3_bucket(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> Bucket:
    """A new, empty bucket; AWS_* variables (and XDG_CACHE_HOME) set for this test."""
    import boto3

    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "test-access-key",
        "AWS_SECRET_ACCESS_KEY": "test-secret-key",
        "AWS_REGION": "us-east-1",
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # a profile or a default region from the machine must not leak in
    for name in ("AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    name = f"test-{secrets.token_hex(6)}"
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=name)
    return Bucket(name=name, endpoint=moto_endpoint, env=env, client=client)
