"""Answer formats (core/answers.py): each preset on the responses it is meant for, and None
where a response states no answer."""
import pytest

from core.answers import extract_answer, extractor_of


@pytest.mark.parametrize("fmt, text, answer", [
    ("boxed", "so \\boxed{\\frac{1}{2}} and done", "\\frac{1}{2}"),
    ("boxed", "first \\boxed{1} then \\boxed{ 2 }", "2"),
    ("boxed", "\\boxed{ }", None),
    ("boxed", "no box here: 42", None),
    ("hashes", "Natalia sold 48/2 = 24 clips.\n#### 1,234", "1234"),
    ("hashes", "#### 72\n", "72"),
    ("hashes", "the answer is 72", None),
    ("last_number", "3 apples and 4 pears make -2.5 things.", "-2.5"),
    ("last_number", "a total of 1,250 dollars", "1250"),
    ("last_number", "x = 3/4", "3/4"),
    ("last_number", "no digits", None),
    ("regex:Answer: (\\w+)", "Answer: no\nAnswer: yes", "yes"),
    ("regex:[0-9]+", "12 then 34", "34"),
    ("toy", "7+5=12;4+8+1=13;3+2+1=6;#632", "632"),
    ("toy", "7+5=12;", None),
])
def test_presets(fmt, text, answer):
    assert extract_answer(text, fmt) == answer


def test_a_missing_format_names_the_field():
    with pytest.raises(ValueError, match="data.answer_format"):
        extractor_of(None)
    with pytest.raises(KeyError, match="unknown extractor"):
        extractor_of("no_such_format")
