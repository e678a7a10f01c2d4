"""Start the smoke flow run of ``test_flow.py`` as soon as its tests are collected
(``flow_background``), so it runs beside the rest of the session."""

from __future__ import annotations

import flow_background


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    if any(
        item.path.name == "test_flow.py" and "first_run" in getattr(item, "fixturenames", ())
        for item in session.items
    ):
        flow_background.start(session.config._tmp_path_factory.mktemp("flow"))


def pytest_sessionfinish(session):
    flow_background.stop()
