"""Every request the endpoint refuses gets its HTTP status and a message naming the problem and the limit."""

import json

import pytest

from offramp.config import ServeConfig
from offramp.serving.requests import RequestError, check_texts, parse_body

CFG = ServeConfig(max_texts_per_request=3, max_chars_per_text=10, max_body_bytes=200)


def refused(body) -> RequestError:
    with pytest.raises(RequestError) as e:
        parse_body(body if isinstance(body, bytes) else json.dumps(body).encode(), CFG)
    return e.value


def test_a_good_body_gives_its_texts_and_blank_texts_pass_to_get_their_status():
    assert parse_body(b'{"texts": ["a b", "", "  "]}', CFG) == ["a b", "", "  "]


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe\x00", 400, "not valid JSON"),
    (["a"], 422, "must be a JSON object, got a list"),
    ({"text": ["a"]}, 422, "unknown field(s) ['text']"),
    ({}, 422, 'no "texts" field'),
    ({"texts": "a"}, 422, "must be a list of strings, got a string"),
    ({"texts": []}, 422, '"texts" is empty'),
    ({"texts": ["a", 3]}, 422, "texts[1] is a number"),
    ({"texts": ["a", None]}, 422, "texts[1] is null"),
    ({"texts": ["a"] * 4}, 413, "at most 3 per request (max_texts_per_request)"),
    ({"texts": ["a", "x" * 11]}, 413, "texts[1] has 11 characters; at most 10"),
    ({"texts": ["a"], "pad": "x" * 300}, 413, "more than 200 bytes (max_body_bytes)"),
])
def test_each_bad_request_gets_its_status_and_a_message_naming_the_problem(body, status, words):
    e = refused(body)
    assert e.status == status and words in str(e)


def test_texts_through_a_handle_are_checked_the_same():
    with pytest.raises(RequestError, match="texts\\[0\\] is a number"):
        check_texts([1], CFG)
