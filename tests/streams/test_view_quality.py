"""Seek latency and picture quality in the view summary, on plain data (no broker, no ClickHouse).

Each expectation is derived from the scenario's own times and sizes, written beside it.
"""

from __future__ import annotations

import math

import pytest

from streams.processors import VIEW_COLUMNS, VIEW_MINUTE_COLUMNS, PartitionProcessor
from tests.streams.test_processors import T0, ev, msg, run, views_by_session
from tests.support.stores import DictStore

END = ("ended", "view_end")


def summary(events, **kwargs):
    """The one view the events make, closed by a later event of another user."""
    closer = ev("heartbeat", max(e["timestamp"] for e in events) + 120_000, session="other", user="u2")
    out, _ = run([msg(events), msg([closer], user="u2")], **kwargs)
    return views_by_session(out)["s1"]


def test_seek_latency_is_the_wait_from_a_seek_during_playback_to_the_next_playing():
    events = [
        ev("view_start", T0),
        ev("playing", T0 + 400),
        ev("seek", T0 + 10_000),
        ev("playing", T0 + 10_350),  # 350 ms
        ev("seek", T0 + 20_000),
        ev("seek", T0 + 20_500),  # a scrub: the same wait, from the first seek
        ev("playing", T0 + 21_200),  # 1,200 ms
        ev("pause", T0 + 30_000),
        ev("seek", T0 + 31_000),  # while paused: the wait is the viewer's, not measured
        ev("playing", T0 + 60_000),
        ev("seek", T0 + 70_000),
        ev("pause", T0 + 70_100),  # paused before playing again: not measured
        ev("playing", T0 + 80_000),
        ev("seek", T0 + 90_000),
        ev("ended", T0 + 90_200),  # never resumed: not measured
    ]
    view = summary(events)
    assert view["seek_count"] == 2
    assert view["seek_latency_ms"] == 350 + 1_200


def test_a_seek_during_a_rebuffer_is_timed_and_out_of_order_events_are_sorted():
    events = [
        ev("view_start", T0),
        ev("playing", T0 + 500),
        ev("rebuffer_start", T0 + 5_000),
        ev("playing", T0 + 7_900),
        ev("seek", T0 + 7_000),  # arrives after the playing that ended its wait
        ev("view_end", T0 + 9_000),
    ]
    view = summary(events)
    assert (view["seek_count"], view["seek_latency_ms"]) == (1, 900)


def test_no_seek_no_sizes_gives_zeros():
    view = summary([ev("view_start", T0), ev("playing", T0 + 500), ev("ended", T0 + 5_000)])
    figures = ("seek_count", "seek_latency_ms", "bitrate_time_ms", "bitrate_kbps_ms", "max_bitrate_kbps",
               "scale_time_ms", "upscale_ms", "downscale_ms", "max_upscale", "max_downscale")  # fmt: skip
    assert {name: view[name] for name in figures} == dict.fromkeys(figures, 0)


def test_upscaling_and_bitrate_are_weighted_by_playing_time_only():
    sizes_720 = {"renditionWidth": 1280, "renditionHeight": 720, "playerWidth": 1920, "playerHeight": 1080}
    events = [
        ev("view_start", T0, bitrateKbps=1500, **sizes_720),
        ev("playing", T0 + 1_000),  # 720p in a 1080p player from here: upscaled by 1080 / 720 - 1 = 0.5
        ev("heartbeat", T0 + 11_000, bitrateKbps=1500, **sizes_720),  # the same picture again
        ev("bitrate_change", T0 + 21_000, bitrateKbps=6000, renditionWidth=1920, renditionHeight=1080),
        ev("rebuffer_start", T0 + 31_000),  # 1080p in 1080p: no scaling for 10 s
        ev("rebuffer_end", T0 + 35_000),  # rebuffering time counts in neither figure
        # Only the player changes (a smaller window): 1080p into 960x540 is downscaled by 0.5.
        ev("heartbeat", T0 + 45_000, playerWidth=960, playerHeight=540),
        ev("ended", T0 + 65_000),
    ]
    view = summary(events)
    up_s, full_s, up2_s, down_s = 20_000, 10_000, 10_000, 20_000  # 1.0-21 s, 21-31 s, 35-45 s, 45-65 s
    playing = up_s + full_s + up2_s + down_s
    assert view["scale_time_ms"] == view["bitrate_time_ms"] == playing
    assert math.isclose(view["upscale_ms"], up_s * 0.5)
    assert math.isclose(view["downscale_ms"], down_s * 0.5)
    assert (view["max_upscale"], view["max_downscale"]) == (0.5, 0.5)
    assert math.isclose(view["bitrate_kbps_ms"], up_s * 1500 + (full_s + up2_s + down_s) * 6000)
    assert view["max_bitrate_kbps"] == 6000
    # The state entry stores the picture only where it changed: 3 of the 8 events.
    store = DictStore()
    run([msg(events[:-1])], store=store)
    stored = store.get(b"u1", "u")["views"]["s1"]["e"]
    assert sum(1 for e in stored if len(e) > 5) == 3


def test_the_fit_uses_the_tighter_axis_and_unknown_sizes_count_nowhere():
    events = [
        ev("view_start", T0),
        ev("playing", T0 + 1_000, renditionWidth=640, renditionHeight=360),  # no player size yet: unknown
        # A 4:3 player 1440x1440: width 1440 / 640 = 2.25, height 4.0; the fit is 2.25, upscale 1.25.
        ev("heartbeat", T0 + 5_000, playerWidth=1440, playerHeight=1440),
        ev("view_end", T0 + 9_000),
    ]
    view = summary(events)
    assert view["scale_time_ms"] == 4_000 and view["bitrate_time_ms"] == 0
    assert math.isclose(view["upscale_ms"], 4_000 * 1.25)
    assert view["max_upscale"] == pytest.approx(1.25)


def test_summary_rows_follow_the_column_layout():
    view = summary([ev("view_start", T0), ev("playing", T0 + 100), ev("seek", T0 + 200), ev("playing", T0 + 260),
                    ev("ended", T0 + 1_000)])  # fmt: skip
    assert set(view) == set(VIEW_COLUMNS) - {"kafka_offset"}
    assert view["seek_latency_ms"] == 60


# --- concurrent viewers: view_minutes --------------------------------------------------------

GRACE = PartitionProcessor().config.grace_ms


def test_a_long_view_emits_each_watching_minute_once_as_soon_as_it_settles():
    start = T0 - T0 % 60_000 + 15_000  # 15 s into a minute
    events = [ev("view_start", start), ev("playing", start + 1_000)]
    events += [ev("heartbeat", start + 10_000 * i) for i in range(1, 19)]  # to 3 min 15 s
    events += [ev("pause", start + 190_000)]  # paused from 3:25 ...
    events += [ev("heartbeat", start + 190_000 + 10_000 * i) for i in range(1, 14)]  # ... heartbeats while paused
    events += [ev("playing", start + 330_000), ev("heartbeat", start + 340_000), ev("ended", start + 345_000)]
    processor, store = PartitionProcessor(), DictStore()
    emitted: list[int] = []
    minute = VIEW_MINUTE_COLUMNS.index("minute_ts")
    for offset, event in enumerate(events):  # one message per event, as a player sends them
        out = processor.process(msg([event]).value(), key=None, partition=0, offset=offset, store=store)
        emitted += [row[minute] for row in out.view_minutes]
        settled = event["timestamp"] - GRACE  # this partition's watermark is the view's own last event
        live = [m for m in emitted if m + 60_000 <= settled]
        # Live: every watching minute that ended before the settled time is out already.
        assert live == [m for m in _minutes(start, (1_000, 190_000), (330_000, 345_000)) if m + 60_000 <= settled]
    closer = ev("heartbeat", start + 500_000, session="other", user="u2")
    out = processor.process(msg([closer], user="u2").value(), key=None, partition=0, offset=len(events), store=store)
    emitted += [row[minute] for row in out.view_minutes if row[1] == "s1"]
    # Playing 0:16-3:25 (4 minutes), paused to 5:45 (the minute from 4:45 not watched), then 5:45-6:00.
    assert emitted == _minutes(start, (1_000, 190_000), (330_000, 345_000))
    assert len(emitted) == 5


def _minutes(start, *spans):
    return sorted({m * 60_000 for a, b in spans for m in range((start + a) // 60_000, (start + b - 1) // 60_000 + 1)})


def test_minute_rows_carry_the_view_context_and_source_offset():
    events = [ev("view_start", T0, country="FR", device="tv"), ev("playing", T0 + 100), ev("ended", T0 + 90_000)]
    closer = ev("heartbeat", T0 + 200_000, session="other", user="u2")
    out, _ = run([msg(events), msg([closer], user="u2")])
    rows = [dict(zip(VIEW_MINUTE_COLUMNS, row, strict=True)) for row in out.view_minutes]
    assert {r["session_id"] for r in rows} == {"s1"}
    assert all((r["user_id"], r["video_id"], r["country"], r["device"]) == ("u1", "v1", "FR", "tv") for r in rows)
    # Minutes settled by the first message (before its watermark less the grace) carry its offset;
    # the rest come with the close, at the second message's.
    settled = T0 + 90_000 - GRACE
    assert [r["kafka_offset"] for r in rows] == [0 if r["minute_ts"] + 60_000 <= settled else 1 for r in rows]
    assert {r["kafka_offset"] for r in rows} == {0, 1}
