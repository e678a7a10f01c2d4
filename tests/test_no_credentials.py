"""No credential ever leaves the process: credentials planted in every input that can carry
one (queue URIs, endpoint URLs, the environment, params) never appear in an error line, a
log line, a result document or an MLflow tag/param. The flow's Metaflow artifacts and
MLflow store are checked for the planted environment secret in tests/pipeline/test_flow.py.
Later S3 and server paths extend this file."""

from __future__ import annotations

import io
import logging

import pytest

from device_lab import runner as lab_runner
from device_lab import submit as lab_submit
from device_lab.schema import ProtocolError, install_redaction, make_result, parse_queue_uri, redact

KEY, SECRET, PASSWORD = "AKIAPLANTEDKEY01", "planted-secret-9f8e7d", "planted-pass-4c4c"
ENV_SECRET = "planted-env-secret-1a2b3c"


@pytest.fixture(autouse=True)
def planted_env(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ENV_SECRET + "-mlflow")


def _clean(text: str) -> None:
    for s in (KEY, SECRET, PASSWORD, ENV_SECRET):
        assert s not in text, f"{s!r} leaked in {text!r}"


URIS = [
    f"s3://{KEY}:{SECRET}@lab/q",
    f"s3://{KEY}@lab/q",
    f"file://{KEY}:{SECRET}@host/q",
    f"http://{KEY}:{SECRET}@lab/q",
    f"s3://{KEY}:{SECRET}@lab/q?x={ENV_SECRET}",
]


@pytest.mark.parametrize("uri", URIS)
def test_a_queue_uri_with_credentials_is_refused_without_echoing_them(uri, capsys):
    with pytest.raises(ProtocolError) as e:
        parse_queue_uri(uri, "--queue")
    _clean(str(e.value))
    for main in (lab_runner.main, lab_submit.main):
        args = ["--queue", uri] + ([] if main is lab_runner.main else ["status", "j-1"])
        try:
            rc = main(args)
        except SystemExit as exit_:  # argparse usage errors
            rc = exit_.code
        err = capsys.readouterr().err
        assert rc == 2, (main, err)
        _clean(err)


def test_an_endpoint_url_with_userinfo_is_a_usage_error_without_echo(capsys):
    rc = lab_runner.main(["--queue", "s3://lab/q", "--endpoint-url", f"http://{KEY}:{PASSWORD}@127.0.0.1:9"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "credentials" in err
    _clean(err)


def test_result_documents_and_log_lines_are_redacted():
    reason = f"fetch s3://{KEY}:{SECRET}@lab/q failed; env said {ENV_SECRET}"
    doc = make_result("j-1", "error", reason, errors=[reason, f"http://u:{PASSWORD}@h/x"])
    _clean(str(doc))
    assert "***" in doc["reason"]

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        install_redaction()
        logging.getLogger("device_lab.test").warning("queue %s: %s", f"s3://{KEY}:{SECRET}@b/p", ENV_SECRET)
    finally:
        root.removeHandler(handler)
    assert "queue s3://***@b/p" in stream.getvalue()
    _clean(stream.getvalue())


def test_params_errors_and_mlflow_records_are_redacted(tmp_path, capsys):
    from mobilemoe.cli import main
    from mobilemoe.lineage import Tracker

    for override in (
        f"tracking.uri=http://{KEY}:{PASSWORD}@mlflow:5000",
        f"device_lab.queue=s3://{KEY}:{SECRET}@lab/q",
        f"device_lab.endpoint_url=http://{KEY}:{PASSWORD}@h:1",
        f"pretrain.lr={ENV_SECRET}",
    ):
        rc = main(["config", "--preset", "tiny", override])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error:"), (override, err)
        _clean(err)

    tracker = Tracker(root=tmp_path)
    run_id = tracker.start_run("r", {"queue": f"s3://{KEY}:{SECRET}@lab/q"})
    tracker.set_tags(run_id, {"endpoint": f"http://{KEY}:{PASSWORD}@h", "env": ENV_SECRET})
    tracker.log_params(run_id, {"data.remote.url": f"s3://{KEY}:{SECRET}@b/p"})
    run = tracker.client.get_run(run_id)
    _clean(repr(run.data.tags) + repr(run.data.params))
    assert run.data.params["data.remote.url"] == "s3://***@b/p"


def test_redact_keeps_ordinary_text():
    assert redact("file:///srv/q/jobs/x.json: not found") == "file:///srv/q/jobs/x.json: not found"
    assert redact("s3://bucket/prefix") == "s3://bucket/prefix"


def test_shared_store_errors_name_the_url_never_the_credentials(monkeypatch):
    """The start checks of the S3 stage cache and the MLflow server (the S3 pipeline test,
    tests/pipeline/test_s3_pipeline.py, also scans MLflow's store, every S3 object, both
    clones and the flow's output for the planted key)."""
    from mobilemoe.config import load_preset
    from mobilemoe.pipeline.stores import StoreError, check_stores

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://{KEY}:{PASSWORD}@127.0.0.1:9")
    params = load_preset("smoke", ["tracking.artifact_store=s3://cache/p"])
    for uri in ("sqlite:///x.db", f"http://{KEY}:{PASSWORD}@127.0.0.1:9"):
        with pytest.raises(StoreError) as e:
            check_stores(params, uri, "s3")
        _clean(str(e.value))
        assert "127.0.0.1:9" in str(e.value)
