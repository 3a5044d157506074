"""The checks that a body's values are numbers the model can read: finite,
within float32's range, JSON numbers or ASCII decimal texts, and NaN only
where the body's form says "not measured" (JSON's null, CSV's empty field).

Three ways give the same answer: `number_of` reads one value (the reference
of what is accepted); `numbers_at_c_speed` checks a whole batch at once with
NumPy; `few_numbers` checks a few rows in plain Python, where NumPy's cost
per call outweighs its speed per value. The two fast ones give None when
anything is wrong or might be: the caller then goes value by value to name
the first wrong one. `instances_text_holds_numbers_only` scans a body's bytes
to tell that its instances hold numbers only, so that no value's type need be
looked at.
"""

import math
import re

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)
# A number written as text: ASCII digits only (Python's float() also takes
# "٢٢", "２２" and "1_000"), with an optional sign, decimals and exponent.
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
ASCII_BLANKS = " \t"
# Texts made of these characters only are numbers to float() exactly when they
# are to _NUMBER_TEXT (with blanks around), and read as the same number.
_NUMBER_CHARACTERS = re.compile(r"[0-9+\-.eE \t,]*", re.ASCII)
_TEXT_SEPARATOR = ","
_JSON_NUMBER_TYPES = frozenset({int, float})
_JSON_NUMBER_OR_NULL_TYPES = frozenset({int, float, type(None)})
# The characters that `{"instances": [[numbers], ...]}` is written with, but
# for its opening brace and its key (those of JSON numbers and lists, the colon,
# the closing brace, JSON's blanks); and what is left of the brace and key
# once they are taken away (see `instances_text_holds_numbers_only`).
_NUMBER_ROWS_TEXT = b"0123456789+-.eE[],:} \t\n\r"
_NUMBER_ROWS_TEXT_LEAVES = b'{"instances"'.translate(None, _NUMBER_ROWS_TEXT)


def parse_number_text(text: str) -> float | None:
    """The number an ASCII decimal text says (surrounding spaces allowed), or
    None for anything else."""
    text = text.strip(ASCII_BLANKS)
    return float(text) if _NUMBER_TEXT.fullmatch(text) else None


def instances_text_holds_numbers_only(text, row_count) -> bool:
    """Does `text`, which orjson parsed into `{"instances": [row_count lists]}`,
    show that every value of those lists is a number? Without the characters
    that numbers and lists are written with, what is left of it must be what
    is left of its opening brace and key: anything else in it (a string's
    quotes, a letter of true, false or null, an object's brace, an escape in
    the key) would be left too. And no list is within a row: one `[` opens
    the instances, one each row."""
    return (
        type(text) is bytes
        and text.translate(None, _NUMBER_ROWS_TEXT) == _NUMBER_ROWS_TEXT_LEAVES
        and text.count(b"[") == row_count + 1
    )


def few_numbers(flat, texts: bool) -> list | None:
    """What `numbers_at_c_speed` gives for a few values (a row or a few), read
    in plain Python; None when one of them is wrong, missing or might be.
    `flat`: JSON values, texts (`texts`), or a binary tensor's numbers."""
    if isinstance(flat, np.ndarray):
        return numbers_at_c_speed(flat, texts, missing_allowed=False)
    try:
        if texts:
            if not _only_number_characters(flat):
                return None
            numbers = list(map(float, flat))
        elif set(map(type, flat)) <= _JSON_NUMBER_TYPES:
            numbers = list(map(float, flat))
        else:
            return None
    except (ValueError, OverflowError):  # a blank text or no number's order ("1e"); an integer beyond float64
        return None
    # NaN and infinity fail this comparison too.
    if not all(-FLOAT32_MAX <= number <= FLOAT32_MAX for number in numbers):
        return None
    return numbers


def numbers_at_c_speed(flat, texts: bool, missing_allowed: bool, numbers_only: bool = False) -> np.ndarray | None:
    """All the values as float64 (NaN for a missing one), converted and
    checked by numpy over the whole batch; None when one of them is wrong or
    might be. `missing_allowed`: whether null (or a blank text) says "not
    measured"; `numbers_only`: the body's text shows that every value is a
    JSON number (`instances_text_holds_numbers_only`)."""
    missing_count = 0
    if isinstance(flat, np.ndarray):
        numbers = flat
    elif texts:
        numbers, missing_count = _numbers_of_texts(flat, blanks_allowed=missing_allowed) or (None, 0)
    else:
        types = _JSON_NUMBER_TYPES if numbers_only else set(map(type, flat))
        if not types <= (_JSON_NUMBER_OR_NULL_TYPES if missing_allowed else _JSON_NUMBER_TYPES):
            return None
        try:
            numbers = np.fromiter(flat, dtype=np.float64, count=len(flat))
        except OverflowError:  # an integer beyond float64
            return None
        missing_count = flat.count(None) if type(None) in types else 0
    if numbers is None:
        return None
    present = numbers
    if not np.isfinite(numbers).all():
        # Every NaN must be a missing value's: a number that says NaN, or infinity, is refused.
        missing = np.isnan(numbers)
        if np.count_nonzero(missing) != missing_count or np.isinf(numbers).any():
            return None
        present = numbers[~missing]
    if present.size and (present.max() > FLOAT32_MAX or present.min() < -FLOAT32_MAX):
        return None
    return numbers


def number_of(value, text: bool, missing_allowed: bool) -> float | None:
    """The number one value says (NaN for a missing one), None when it is not
    a number its form accepts. `text`: the value is a text (a CSV field)."""
    if text:
        blank = value.strip(ASCII_BLANKS) == ""
        number = None if blank else parse_number_text(value)
    else:
        blank = value is None
        number = float(value) if type(value) in _JSON_NUMBER_TYPES and abs(value) <= FLOAT32_MAX else None
    if blank:
        return math.nan if missing_allowed else None
    if number is None or not math.isfinite(number) or abs(number) > FLOAT32_MAX:
        return None
    return number


def _only_number_characters(texts) -> bool:
    """Whether every text is made of `_NUMBER_CHARACTERS` only, checked at once."""
    joined = _TEXT_SEPARATOR.join(texts)
    # A text holding the separator would hide among the others.
    return joined.count(_TEXT_SEPARATOR) == len(texts) - 1 and _NUMBER_CHARACTERS.fullmatch(joined) is not None


def _numbers_of_texts(texts, blanks_allowed) -> tuple[np.ndarray, int] | None:
    """The numbers the texts say and how many were blank (NaN), or None when
    one text might not be an ASCII decimal."""
    if not _only_number_characters(texts):
        return None
    try:
        return np.array(texts, dtype=np.float64), 0
    except ValueError:  # a blank text, or these characters in no number's order ("1e", "+")
        if not blanks_allowed:
            return None
    # "nan" has letters no text here holds: each one stands for a blank text.
    texts = [text.strip(ASCII_BLANKS) or "nan" for text in texts]
    try:
        return np.array(texts, dtype=np.float64), texts.count("nan")
    except ValueError:
        return None
