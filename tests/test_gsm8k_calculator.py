"""The calculator tool against GSM8K: every `<<expr=result>>` annotation in the real train and test files."""
import json, math
import pytest

from conftest import SHARED_DATA
from nanochat_nb.execution import (calc_eval, CalculatorError, check_calculator_annotations,
                                   find_calculator_annotations, use_calculator)

GSM8K = SHARED_DATA / "gsm8k"


def _answers(split):
    path = GSM8K / f"{split}.jsonl"
    if not path.is_file():
        pytest.skip(f"GSM8K {split} split not found at {path} (the shared evaluation data is not next to this checkout)")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["answer"] for line in f if line.strip()]


def test_annotation_parser():
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips.\nSo 48+24 = <<48+24=72>>72.\n#### 72"
    assert find_calculator_annotations(text) == [("48/2", "24"), ("48+24", "72")]
    assert find_calculator_annotations("#### 5") == []
    rep = check_calculator_annotations([text, "<<2+2=5>>", "<<3/4=3/4>>", "<<2**8=256>>"])
    assert (rep.total, rep.matched) == (5, 2)
    assert rep.counts == {"the values differ": 1, "the stated result is not a number": 1,
                          "the calculator refuses the expression": 1}


def test_gsm8k_train_annotations_all_match():
    rep = check_calculator_annotations(_answers("train"))
    assert (rep.total, rep.matched, rep.counts) == (23716, 23716, {})


def test_gsm8k_test_annotations():
    rep = check_calculator_annotations(_answers("test"))
    assert (rep.total, rep.matched) == (4282, 4281)
    # the one failure writes its result as a fraction; the calculator's value is the same number
    assert rep.examples == {"the stated result is not a number": [("3/4", "3/4", "0.75")]}


@pytest.mark.parametrize("split", ["train", "test"])
def test_gsm8k_agrees_with_python_arithmetic(split):
    """Plain arithmetic is where Python's eval is a correct (if unsafe) reference: every annotation's left side uses only
    digits, '.', + - * / // and parentheses, so eval it (after that character check) and compare exactly."""
    n = 0
    for answer in _answers(split):
        for expr, _ in find_calculator_annotations(answer):
            assert set(expr) <= set("0123456789.+-*/()"), expr
            ref = eval(expr)
            got = calc_eval(expr)
            assert type(got) is type(ref) and math.isclose(got, ref, rel_tol=0, abs_tol=0), expr
            n += 1
    assert n > 4000


def test_calculator_contract():
    assert use_calculator("12/4") == "3" and use_calculator("7/2") == "3.5"
    assert use_calculator('"strawberry".count("r")') == "3"
    assert use_calculator("1,234 + 1") == "1235"
    for bad in ["10**10**10", "__import__('os').system('true')", "open('x')", "x", "1/0", "9" * 200,
                "(" * 500 + "1" + ")" * 500, "1+" * 2000 + "1", "'a' * 5", "'s'.count(x)", "[].count(1)"]:
        assert use_calculator(bad) is None, bad
    with pytest.raises(CalculatorError, match="Pow"):
        calc_eval("2**3")
