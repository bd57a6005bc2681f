"""Issue 10, case 7: every public API argument, given a wrong-typed or odd value, gives
`WeightportError` (what the README promises), never ValueError, TypeError, OverflowError or
AttributeError; and its message speaks in the caller's terms (`force=True`, not `--force`)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import weightport
from conftest import FIXTURES
from weightport.verification import VerificationFailed

SEQ = FIXTURES / "seq__k3.keras"

ODD = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.binary(max_size=6), st.lists(st.one_of(st.integers(-3, 10**20), st.floats(), st.text(max_size=3)), max_size=5),
    st.tuples(st.floats(0.1, 9.9), st.integers(1, 4)), st.dictionaries(st.text(max_size=4), st.one_of(st.integers(), st.text(max_size=4), st.none()), max_size=3),
    st.just(object()), st.just(math.nan), st.just(Path("/nonexistent/x.h5")), st.just(SEQ), st.just(str(SEQ)),
)

# every keyword of every public function, and one call shape that reaches it
CALLS = {
    "plan": ["target", "config", "flatten", "source_order", "flip_kernels", "maps", "skips", "drops", "units", "align", "score_map"],
    "convert": ["target", "force", "full_model", "config", "flatten", "source_order", "flip_kernels", "maps", "skips", "drops", "units",
                "align", "score_map", "progress", "verify", "compression"],
    "verify": ["config", "flatten", "source_order", "flip_kernels", "maps", "skips", "drops", "units", "align", "score_map", "atol", "rtol"],
}
ARGUMENTS = [(function, name) for function, names in CALLS.items() for name in names]


def _call(function: str, tmp_path: Path, **kwargs):
    out = tmp_path / "out.weights.h5"
    if function == "plan":
        return weightport.plan(SEQ, **kwargs)
    if function == "convert":
        return weightport.convert(SEQ, out, force=kwargs.pop("force", True), **kwargs)
    return weightport.verify(SEQ, FIXTURES / "seq__k3.weights.h5", **kwargs)


@pytest.mark.parametrize("function,name", ARGUMENTS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=ODD)
def test_odd_values_give_weightport_error_only(function: str, name: str, value, tmp_path: Path) -> None:
    try:
        _call(function, tmp_path, **{name: value})
    except weightport.WeightportError as exc:
        assert "\n" not in str(exc) and str(exc)
    except VerificationFailed:
        pass  # a value that passes every check and converts wrongly (a flatten order) is caught by the verification


@pytest.mark.parametrize("function", [*sorted(CALLS), "read"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=ODD)
def test_odd_sources_give_weightport_error_only(function: str, source, tmp_path: Path) -> None:
    try:
        {"plan": lambda: weightport.plan(source), "convert": lambda: weightport.convert(source, tmp_path / "o.h5", force=True),
         "verify": lambda: weightport.verify(source, FIXTURES / "seq__k3.weights.h5"),
         "read": lambda: weightport.read(source).close()}[function]()
    except weightport.WeightportError:
        pass


@settings(max_examples=25, deadline=None)
@given(model=ODD, option=st.sampled_from(["target", "out", "quiet", "verify", "compression", "force"]), value=ODD)
def test_convert_into_model_refuses_what_is_not_a_model_or_an_option(model, option: str, value) -> None:
    try:
        weightport.convert_into_model(SEQ, model, **{option: value})
    except weightport.WeightportError:
        pass


@pytest.mark.parametrize("call, named", [
    (lambda out: weightport.plan(SEQ, source_order="xyz"), "source_order='xyz'"),
    (lambda out: weightport.plan(SEQ, flatten=(7.5, 7, 512)), "flatten=(7.5, 7, 512)"),
    (lambda out: weightport.convert(SEQ, out, compression=5), "compression=5"),
    (lambda out: weightport.verify(SEQ, out, atol="x"), "atol='x'"),
    (lambda out: weightport.convert(SEQ, out, force="no"), "force is 'no'"),
])
def test_the_issues_examples_are_weightport_errors_naming_the_argument(call, named: str, tmp_path: Path) -> None:
    with pytest.raises(weightport.WeightportError) as raised:
        call(tmp_path / "out.h5")
    assert str(raised.value).startswith(named) and "--" not in str(raised.value)


def test_messages_speak_in_the_callers_terms(tmp_path: Path) -> None:
    """The same refusals from the API and from the command line, each in its own terms."""
    from conftest import run_cli

    out = tmp_path / "out.h5"
    out.write_bytes(b"kept")
    with pytest.raises(weightport.WeightportError) as raised:
        weightport.convert(SEQ, out)
    assert "pass force=True to replace it" in str(raised.value) and "--" not in str(raised.value)
    assert "pass --force to replace it" in run_cli("convert", str(SEQ), "-o", str(out)).stderr
    weights_only = FIXTURES / "gap__k3.weights.h5"
    with pytest.raises(weightport.WeightportError) as raised:
        weightport.plan(weights_only)
    assert "give flatten=(H, W, C)" in str(raised.value) and "config='model.json'" in str(raised.value)
    assert "--" not in str(raised.value)
    assert "give --flatten H,W,C" in run_cli("plan", str(weights_only)).stderr
