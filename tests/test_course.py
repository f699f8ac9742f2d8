"""The course's exercises: every reference solution runs, `check` accepts it and refuses a wrong
answer, and every exercise is posed in its notebook (so none can silently go stale)."""
import json
from pathlib import Path

import pytest

from sparsevlm import course

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _wrong(ex, ref):
    if ex.kind == "number":
        return ref + 10 * ex.tol + 1
    if ex.kind == "int":
        return ref + 1
    if ex.kind == "choice":
        return next(c for c in ex.choices if c != ref)
    return set(ref) ^ {0}


@pytest.mark.parametrize("exercise", list(course.EXERCISES))
def test_reference_solution_is_accepted_and_a_wrong_answer_refused(exercise, capsys):
    """A right answer says why; the first wrong answer gets the nudge, the second the recipe."""
    ex = course.EXERCISES[exercise]
    assert ex.nudge and ex.why and ex.hint and ex.nudge != ex.hint, exercise
    ref = course.solution(exercise)
    assert course.check(exercise, ref) is True
    assert capsys.readouterr().out.strip() == f"{exercise}: right. {ex.why}"
    assert course.check(exercise, _wrong(ex, ref)) is False
    assert f"{exercise}: wrong" in (first := capsys.readouterr().out) and f"Hint: {ex.nudge}." in first
    assert course.check(exercise, _wrong(ex, ref)) is False
    assert f"Hint: {ex.hint}." in capsys.readouterr().out
    course.check(exercise, ref, quiet=True)  # a right answer resets the hints
    if ex.kind == "choice":
        assert ref in ex.choices


@pytest.mark.parametrize("exercise", [e for e, ex in course.EXERCISES.items() if ex.slips])
def test_each_named_slip_is_recognised(exercise, capsys):
    ex = course.EXERCISES[exercise]
    ref = course.solution(exercise)
    for name, wrong in ex.slips:
        assert course.check(exercise, wrong(ref)) is False
        assert f"that is the slip '{name}'" in capsys.readouterr().out, name
    course.check(exercise, ref, quiet=True)


def test_numpy_scalars_and_zero_d_tensors_are_numbers():
    import numpy as np
    import torch

    for exercise in ("04.1", "02.1"):
        ref = course.solution(exercise)
        for answer in (np.array(ref), np.array([ref])[0], torch.tensor(ref)):
            assert course.check(exercise, answer, quiet=True) is True, (exercise, type(answer))
    assert course.check("04.1", np.float64(course.solution("04.1")), quiet=True) is True
    assert course.check("04.1", torch.ones(2), quiet=True) is False


def test_unanswered_and_malformed_answers():
    assert course.check("04.1") is None
    assert course.check("04.1", "two", quiet=True) is False
    assert course.check("02.2", 3, quiet=True) is False
    with pytest.raises(ValueError, match="exercise='99.9' does not exist"):
        course.check("99.9", 1)


def test_every_exercise_is_posed_in_its_notebook_and_no_solution_is_printed():
    posed = {}
    for path in NOTEBOOKS.glob("*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            src = "".join(cell["source"])
            for ex in course.EXERCISES:
                if f"check({ex!r}" in src:
                    posed[ex] = path.name
                assert f"solution({ex!r}" not in src
    assert set(posed) == set(course.EXERCISES)
    assert all(posed[ex].startswith(ex.split(".")[0]) for ex in posed)
    numbers = {path.name[:2] for path in NOTEBOOKS.glob("*.ipynb")}
    counts = {n: sum(ex.startswith(f"{n}.") for ex in course.EXERCISES) for n in numbers}
    assert all(1 <= c <= 3 for c in counts.values()), counts
    assert all(counts[n] >= 2 for n in numbers - {"00", "11"}), counts


def test_every_notebook_ends_with_takeaways_and_try_next():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        heads = [c["source"] if isinstance(c["source"], str) else "".join(c["source"])
                 for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]
        assert any(h.startswith("## Takeaways") for h in heads), path.name
        assert any(h.startswith("## Try next") for h in heads), path.name
