"""What one request to the endpoint may hold, checked before any text is tokenized.

Every refusal is a `RequestError` carrying its HTTP status and a message that names the
problem and the limit: 400 for a body that is not JSON, 413 for anything over a limit (body
bytes, texts per request, characters per text), 422 for JSON of the wrong shape. The same
checks run for HTTP bodies and for texts passed through a deployment handle. No torch here.
"""

from __future__ import annotations

import json

from offramp.config import ServeConfig

EXAMPLE = '{"texts": ["first text", "second text"]}'


class RequestError(ValueError):
    """A request the endpoint refuses; `status` is the HTTP status it answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_body_size(size: int, cfg: ServeConfig) -> None:
    if size > cfg.max_body_bytes:
        raise RequestError(413, f"the body has more than {cfg.max_body_bytes} bytes (max_body_bytes); "
                                "send fewer or shorter texts per request")


def parse_body(body: bytes, cfg: ServeConfig) -> list[str]:
    """A request body -> its texts, or a RequestError naming what is wrong."""
    check_body_size(len(body), cfg)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise RequestError(400, f"the body is not valid JSON ({e}); send {EXAMPLE}") from None
    if not isinstance(data, dict):
        raise RequestError(422, f"the body must be a JSON object, got {json_type(data)}; send {EXAMPLE}")
    unknown = sorted(set(data) - {"texts"})
    if unknown:
        raise RequestError(422, f"unknown field(s) {unknown} in the body; it holds only \"texts\": {EXAMPLE}")
    if "texts" not in data:
        raise RequestError(422, f"the body has no \"texts\" field; send {EXAMPLE}")
    return check_texts(data["texts"], cfg)


def check_texts(texts, cfg: ServeConfig) -> list[str]:
    """`texts` as a list of strings within the limits, or a RequestError. Empty and
    whitespace-only strings pass: each is answered with status `empty`, as in a tagging run."""
    if not isinstance(texts, (list, tuple)):
        raise RequestError(422, f"\"texts\" must be a list of strings, got {json_type(texts)}")
    if not texts:
        raise RequestError(422, "\"texts\" is empty; send at least one text")
    if len(texts) > cfg.max_texts_per_request:
        raise RequestError(413, f"\"texts\" holds {len(texts)} texts; at most {cfg.max_texts_per_request} per "
                                "request (max_texts_per_request): split it into several requests")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(422, f"texts[{i}] is {json_type(text)}; every text must be a string")
        if len(text) > cfg.max_chars_per_text:
            raise RequestError(413, f"texts[{i}] has {len(text)} characters; at most {cfg.max_chars_per_text} "
                                    "per text (max_chars_per_text)")
    return list(texts)


def json_type(value) -> str:
    """What a JSON value is, in JSON's words (a message names the type the client sent)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
