"""The service's JSON answers, handed to the WSGI server as they are."""

import numpy as np
import orjson
from flask import Response

from diabetes.features import FEW_ROWS


class JsonResponse(Response):
    """A JSON answer whose body is already serialized (bytes). werkzeug's
    general way of answering (`Response.__call__`) copies and re-checks the
    headers and wraps the body for cases a JSON answer is not: a redirect's
    Location, a streamed or file body, callbacks on close, HEAD, 1xx, 204 and
    304. For a small request that is a large share of the app's own time, so
    a JSON answer skips it; a body that is not a list of bytes, callbacks on
    close, HEAD, 1xx, 204 and 304 still go werkzeug's way (so never set a
    Location on one: use a plain Response to redirect)."""

    default_mimetype = "application/json"

    def __call__(self, environ, start_response):
        status = self.status_code
        if (
            not self.is_sequence
            or self._on_close
            or environ["REQUEST_METHOD"] == "HEAD"
            or status < 200
            or status in (204, 304)
        ):
            return super().__call__(environ, start_response)
        start_response(self.status, self.headers.to_wsgi_list())
        return self.response


# /predict's answer without explanations: orjson's list of the probabilities,
# each comma made into the text between two predictions, whose label is then
# set over its 0 where it is 1 (the text is as long either way).
_FIRST_PREDICTION = b'{"probability":'
_BETWEEN_PREDICTIONS = b',"label":0},{"probability":'
_LABEL_IN_BETWEEN = _BETWEEN_PREDICTIONS.index(b"0")
_AFTER_LAST_PROBABILITY = (b',"label":0}]}', b',"label":1}]}')
_COMMA, _ONE = ord(","), ord("1")


def predictions_answer(members: dict, probabilities: np.ndarray, labels: np.ndarray, explanations=None) -> bytes:
    """/predict's answer as JSON: `members`, then `predictions`, one
    `{"probability": p, "label": l}` per row (`labels`: integers, 0 or 1),
    with its `explanation` when `explanations` gives one per row.

    Without explanations the bytes are the same as orjson writes for those
    dicts, but no dict is made: a batch of many rows would spend most of its
    answer's time making them (and collecting them). orjson still writes
    every number."""
    if explanations is not None or len(probabilities) <= FEW_ROWS:
        pairs = zip(probabilities.tolist(), labels.tolist())
        predictions = [{"probability": p, "label": label} for p, label in pairs]
        for prediction, explanation in zip(predictions, explanations or ()):
            prediction["explanation"] = explanation
        return orjson.dumps({**members, "predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
    opening = orjson.dumps({**members, "predictions": []}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not opening.endswith(b'"predictions":[]}'):
        raise ValueError('"predictions" must be the last member of the answer')
    numbers = orjson.dumps(probabilities.tolist())  # [p0,p1,...]: a comma after each probability but the last
    commas = np.flatnonzero(np.frombuffer(numbers, dtype=np.uint8) == _COMMA)
    answer = bytearray(opening[:-2] + _FIRST_PREDICTION)
    # The comma after probability i lands where it is in `numbers`, moved by what the answer holds before
    # numbers[1] and by the i commas before it, each grown into the text between two predictions.
    moved_by = len(answer) - 1
    answer += numbers[1:-1].replace(b",", _BETWEEN_PREDICTIONS)
    answer += _AFTER_LAST_PROBABILITY[labels[-1]]
    ones = np.flatnonzero(labels[:-1])
    labels_written = moved_by + commas[ones] + ones * (len(_BETWEEN_PREDICTIONS) - 1) + _LABEL_IN_BETWEEN
    np.frombuffer(answer, dtype=np.uint8)[labels_written] = _ONE
    return bytes(answer)
