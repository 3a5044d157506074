"""The service's JSON answers, handed to the WSGI server as they are."""

import numpy as np
import orjson
from flask import Response


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


# /predict's answer is written from these pieces when no row carries an explanation: one after each
# probability, by the row's label, the last one closing the list and the answer.
_FIRST_PREDICTION = b'{"probability":'
_AFTER_PROBABILITY = np.array([b',"label":0},{"probability":', b',"label":1},{"probability":'], dtype=object)
_AFTER_LAST_PROBABILITY = np.array([b',"label":0}]}', b',"label":1}]}'], dtype=object)


def predictions_answer(members: dict, probabilities: np.ndarray, labels: np.ndarray, explanations=None) -> bytes:
    """/predict's answer as JSON: `members`, then `predictions`, one
    `{"probability": p, "label": l}` per row (0 or 1), with its `explanation`
    when `explanations` gives one per row.

    Without explanations the bytes are the same as orjson writes for those
    dicts, but no dict is made: a batch of many rows would spend most of its
    answer's time making them (and collecting them). orjson still writes
    every number, and the text between two probabilities depends only on
    the label of the first."""
    if explanations is not None or len(probabilities) == 0:
        pairs = zip(probabilities.tolist(), labels.tolist())
        predictions = [{"probability": p, "label": label} for p, label in pairs]
        for prediction, explanation in zip(predictions, explanations or ()):
            prediction["explanation"] = explanation
        return orjson.dumps({**members, "predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
    opening = orjson.dumps({**members, "predictions": []}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not opening.endswith(b'"predictions":[]}'):
        raise ValueError('"predictions" must be the last member of the answer')
    numbers = orjson.dumps(probabilities.tolist())[1:-1].split(b",")
    pieces = [None] * (2 * len(numbers) + 1)
    pieces[0] = opening[:-2] + _FIRST_PREDICTION
    pieces[1::2] = numbers
    pieces[2::2] = _AFTER_PROBABILITY[labels].tolist()
    pieces[-1] = _AFTER_LAST_PROBABILITY[labels[-1]]
    return b"".join(pieces)
