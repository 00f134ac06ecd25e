"""Several questions of one page at once (``metric_timeseries_get_many``): same answers, side by side."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connections
from django.test import override_settings

from analytics_platform.errors import ApplicationError
from metrics import query, selectors
from metrics.selectors import Question, metric_answers, metric_timeseries_get, metric_timeseries_get_many
from tests.metrics import data as gen
from tests.metrics.conftest import dataset_base

pytestmark = [pytest.mark.clickhouse, pytest.mark.django_db(databases=["default", "clickhouse"])]

START, END = dataset_base(), dataset_base() + timedelta(days=3)

QUESTIONS: list[Question] = [
    {"metrics": ["views", "rebuffer_ratio", "events"], "start": START, "end": END, "interval": "hour"},
    {"metrics": ["views", "viewer_experience_score"], "start": START, "end": END, "group_by": ["country"]},
    {"metrics": ["views"], "start": START, "end": END, "group_by": ["videoId"], "limit": 20},
    {"metrics": ["errors"], "start": START, "end": END, "interval": "day", "filters": [("videoId", "video-0")]},
]


def test_a_batch_answers_each_question_as_it_is_answered_alone(loaded: gen.Dataset) -> None:
    with override_settings(METRICS_QUERY_CACHE_SECONDS=0):
        together = metric_timeseries_get_many(QUESTIONS)
        alone = [metric_timeseries_get(**q) for q in QUESTIONS]
    assert together == alone
    views = sum(1 for v in loaded.views if v["has_view_start"] and START <= v["start_ts"] < END)
    assert together[0]["metrics"][0]["series"][0]["total"] == views
    assert sum(s["total"] or 0 for s in together[1]["metrics"][0]["series"]) == views


def test_an_invalid_question_fails_the_batch_with_its_own_error(loaded: gen.Dataset) -> None:
    bad: Question = {"metrics": ["views"], "start": START, "end": END, "group_by": ["no_such_dimension"]}
    with pytest.raises(ApplicationError) as raised:
        metric_timeseries_get_many([QUESTIONS[0], bad, QUESTIONS[2]])
    with pytest.raises(ApplicationError) as alone:
        metric_timeseries_get(**bad)
    assert (raised.value.code, raised.value.field, raised.value.message) == (
        alone.value.code,
        alone.value.field,
        alone.value.message,
    )
    with pytest.raises(ApplicationError) as unknown:
        metric_timeseries_get_many([QUESTIONS[0], {"metrics": ["no_such_metric"]}])
    assert unknown.value.code == "unknown_metric"


def test_cached_questions_come_back_as_stored_and_the_rest_run(loaded: gen.Dataset) -> None:
    with override_settings(METRICS_QUERY_CACHE_SECONDS=60):
        first = metric_answers(QUESTIONS[:2])
        assert all(rendered is not None for _, rendered in first)
        fresh: Question = {**QUESTIONS[2], "limit": 7}
        second = metric_answers([QUESTIONS[1], fresh, QUESTIONS[0]])
    assert second[0] == (None, first[1][1]) and second[2] == (None, first[0][1])  # hits, as stored
    assert second[1][0] is not None and len(second[1][0]["metrics"][0]["series"]) <= 7  # ran


def test_the_questions_queries_run_side_by_side(loaded: gen.Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four one-query questions of 0.6 s each are all running at one moment (not one after another).

    Checked by overlap, not by a duration: every query starts before any of them ends. Asked one
    after another, each would start after the previous one ended, however fast the machine.
    """
    build = query.queries_build
    execute = selectors.query_execute
    spans: list[tuple[float, float]] = []

    def slow(metrics: list[query.CompiledMetric], request: query.MetricRequest) -> list[query.BuiltQuery]:
        return [
            dataclasses.replace(real, sql=f"SELECT q.* FROM ({real.sql}) AS q CROSS JOIN (SELECT sleep(0.6) AS z) AS s")
            for real in build(metrics, request)
        ]

    def timed(one: query.BuiltQuery, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return execute(one, **kwargs)
        finally:
            spans.append((started, time.monotonic()))

    monkeypatch.setattr(query, "queries_build", slow)
    monkeypatch.setattr(selectors, "query_execute", timed)
    questions: list[Question] = [{**q, "metrics": q["metrics"][:1]} for q in QUESTIONS]
    with override_settings(METRICS_QUERY_CACHE_SECONDS=0):
        metric_timeseries_get_many(questions[:1])  # connections of the pool's threads opened
        spans.clear()
        together = metric_timeseries_get_many(questions)
    monkeypatch.undo()
    with override_settings(METRICS_QUERY_CACHE_SECONDS=0):
        assert together == [metric_timeseries_get(**q) for q in questions]
    assert len(spans) == len(questions)
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans


def test_a_batch_asked_from_the_pool_threads_does_not_wait_on_the_pool(loaded: gen.Dataset) -> None:
    """Every thread of the pool asking a batch of several queries: none may wait for a free thread."""

    def ask(_: Any) -> list[selectors.MetricsResult]:
        try:
            return metric_timeseries_get_many(QUESTIONS)
        finally:
            connections.close_all()  # this thread's Django connections, or the test database stays in use

    with override_settings(METRICS_QUERY_CACHE_SECONDS=0):
        futures = [selectors._pool.submit(ask, i) for i in range(selectors._pool._max_workers)]
        answers = [f.result(timeout=60) for f in futures]
        expected = metric_timeseries_get_many(QUESTIONS)
    assert all(a == expected for a in answers)
