"""Which events a change of progress produces: pure functions, no servers."""

import json

import pytest

from bot.events import EventType, Snapshot, build_events, transitions
from bot.ivh import Progress

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
    assert progress.round == 2
    assert progress.confirm is not None
    assert progress.confirm.train_record[0].start_time == "2023-11-01 23:00:17"


def test_round_never_goes_back_when_stage_info_is_empty():
    progress = Progress.model_validate({"Status": "MAKING", "StageV2": "TRAIN", "StageInfo": ""})
    assert Snapshot.of(progress, previous_round=2).round == 2


def test_garbage_stage_info_is_a_validation_error():
    with pytest.raises(ValueError):
        _progress("{not json")
