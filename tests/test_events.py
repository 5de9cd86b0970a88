"""Which events a change of progress produces: pure functions, no servers."""

import json

import pytest

from bot.events import build_events, snapshot_of, transitions
from bot.ivh import Progress
from bot.model import EventType, Snapshot

TRAINING = Snapshot(status="MAKING", stage="TRAIN", stage_status="PROCESSING", round=1)
WAITING_1 = Snapshot(
    status="MAKING", stage="CONFIRM", stage_status="WAIT_PROCESS", round=1, demo_urls=("u1",)
)
WAITING_2 = WAITING_1.model_copy(update={"round": 2, "demo_urls": ("u2",)})
CONFIRMING = Snapshot(status="MAKING", stage="CONFIRM", stage_status="PROCESSING", round=1)
SUCCESS = Snapshot(status="SUCCESS", stage="END", stage_status="SUCCESS", round=1)
FAIL = Snapshot(status="FAIL", stage="TRAIN", stage_status="FAIL", fail_message="bad video")


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        (None, TRAINING, []),
        (TRAINING, TRAINING, []),
        (TRAINING, WAITING_1, [EventType.AWAITING_CONFIRMATION]),
        (None, WAITING_1, [EventType.AWAITING_CONFIRMATION]),
        (WAITING_1, WAITING_1, []),
        (WAITING_1, WAITING_2, [EventType.ROUND_CHANGED]),
        (WAITING_1, CONFIRMING, [EventType.LEFT_CONFIRMATION]),
        (WAITING_1, TRAINING, [EventType.LEFT_CONFIRMATION]),
        (CONFIRMING, SUCCESS, [EventType.SUCCEEDED]),
        (WAITING_1, SUCCESS, [EventType.LEFT_CONFIRMATION, EventType.SUCCEEDED]),
        (None, SUCCESS, [EventType.SUCCEEDED]),
        (SUCCESS, SUCCESS, []),
        (TRAINING, FAIL, [EventType.FAILED]),
        (FAIL, FAIL, []),
    ],
)
def test_each_transition_produces_its_events(previous, current, expected):
    assert transitions(previous, current) == expected


def test_awaiting_event_carries_round_and_demo_urls():
    [event] = build_events("t1", TRAINING, WAITING_2, at=1.0)
    assert (event.type, event.round, event.demo_urls) == (
        EventType.AWAITING_CONFIRMATION,
        2,
        ["u2"],
    )


def test_failed_event_carries_the_message():
    [event] = build_events("t1", TRAINING, FAIL, at=1.0)
    assert event.fail_message == "bad video"


def _progress(stage_info: object, **fields: object) -> Progress:
    payload = {"Status": "MAKING", "StageV2": "CONFIRM", "StatusV2": "WAIT_PROCESS"}
    payload |= {"StageInfo": stage_info, **fields}
    return Progress.model_validate(payload)


CONTENT = {
    "TrainResult": ["https://x/r2.mp4"],
    "RejectReason": "",
    "TrainRecord": [
        {"StartTime": "2023-11-01 23:00:17", "Record": ["https://x/r1.mp4"]},
        {"StartTime": "2023-11-03 10:00:00", "Record": ["https://x/r2.mp4"]},
    ],
}


@pytest.mark.parametrize("shape", [CONTENT, {"CustomerConfirmContent": CONTENT}])
def test_stage_info_is_parsed_from_its_json_string_in_either_shape(shape):
    progress = _progress(json.dumps(shape))
    assert progress.waiting_for_confirmation
    assert progress.demo_urls == ["https://x/r2.mp4"]
    assert progress.train_records == 2
    assert progress.confirm is not None
    assert progress.confirm.train_record[0].start_time == "2023-11-01 23:00:17"


def test_round_never_goes_back_when_stage_info_is_empty():
    progress = Progress.model_validate({"Status": "MAKING", "StageV2": "TRAIN", "StageInfo": ""})
    previous = Snapshot(status="MAKING", stage="CONFIRM", stage_status="WAIT_PROCESS", round=2)
    assert snapshot_of(progress, previous).round == 2


# --- rounds under both readings of TrainRecord ----------------------------------------------


def _reading(reading: str, round_: int, *, urls: list[str] | None = None) -> Progress:
    """The task waiting in round `round_` as Tencent would show it under `reading`: TrainRecord
    lists every round including this one (`current`), or only the earlier ones (`history`)."""
    listed = round_ if reading == "current" else round_ - 1
    content = {
        "TrainResult": urls or [f"https://cos.example/t/{round_}/1.mp4?sign=a{round_}"],
        "RejectReason": "",
        "TrainRecord": [{"StartTime": "2026-11-30 12:00:00", "Record": []}] * listed,
    }
    return _progress(json.dumps({"CustomerConfirmContent": content}))


TRAINING_ANSWER = Progress.model_validate(
    {"Status": "MAKING", "StageV2": "TRAIN", "StatusV2": "PROCESSING"}
)


def _rounds(*answers: Progress) -> list[int]:
    """The round the poller gives each answer in turn, and the events between them."""
    seen: Snapshot | None = None
    rounds = []
    for answer in answers:
        seen = snapshot_of(answer, seen)
        rounds.append(seen.round)
    return rounds


@pytest.mark.parametrize("reading", ["current", "history"])
def test_reject_then_retrain_is_round_two_under_either_reading(reading):
    assert _rounds(_reading(reading, 1), TRAINING_ANSWER, _reading(reading, 2)) == [1, 1, 2]


@pytest.mark.parametrize("reading", ["current", "history"])
def test_a_retrain_quicker_than_a_poll_is_a_new_round_under_either_reading(reading):
    first, second = _reading(reading, 1), _reading(reading, 2)
    assert _rounds(first, second) == [1, 2]
    before, after = snapshot_of(first), snapshot_of(second, snapshot_of(first))
    assert transitions(before, after) == [EventType.ROUND_CHANGED]


@pytest.mark.parametrize("reading", ["current", "history"])
def test_the_same_demo_read_again_is_the_same_round(reading):
    """Links signed afresh on each read (another query) still name the same videos."""
    again = _reading(reading, 1, urls=["https://cos.example/t/1/1.mp4?sign=other"])
    assert _rounds(_reading(reading, 1), _reading(reading, 1), again) == [1, 1, 1]


def test_new_videos_at_the_same_paths_are_a_new_round_when_train_record_grows():
    """Under the history reading with videos overwritten in place: TrainRecord still grows."""
    urls = ["https://cos.example/t/demo.mp4"]
    assert _rounds(_reading("history", 1, urls=urls), _reading("history", 2, urls=urls)) == [1, 2]


def test_a_snapshot_stored_by_an_earlier_version_starts_no_round():
    """Stored before train_records was kept: its absence is not a TrainRecord that grew."""
    old = snapshot_of(_reading("current", 2)).model_copy(update={"train_records": None})
    assert snapshot_of(_reading("current", 2), old).round == 2


def test_train_record_only_raises_the_count():
    """First seen in round 3 under the current reading; later answers never go below it."""
    assert _rounds(_reading("current", 3), TRAINING_ANSWER, _reading("history", 2)) == [3, 3, 4]


def test_garbage_stage_info_is_a_validation_error():
    with pytest.raises(ValueError):
        _progress("{not json")


@pytest.mark.parametrize("reading", ["current", "history"])
def test_an_answer_without_demo_links_starts_no_round(reading):
    """WAIT_PROCESS with StageInfo missing says nothing about the round: neither its absence
    nor the links coming back is a retrain."""
    bare = Progress.model_validate(
        {"Status": "MAKING", "StageV2": "CONFIRM", "StatusV2": "WAIT_PROCESS", "StageInfo": ""}
    )
    assert _rounds(_reading(reading, 1), bare, _reading(reading, 1)) == [1, 1, 1]
