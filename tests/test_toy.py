"""The embedded default: deterministic data, a shipped checkpoint that loads offline and
reproduces its recorded accuracy."""
import json

import numpy as np
import pytest
import torch

from sparsevlm import toy
from sparsevlm.toy.data import CELLS, QUESTION_TYPES, ask, cell_patches, make_dataset, vocabulary


def test_generator_is_deterministic_and_seed_dependent():
    s1, i1 = make_dataset(20, seed=3)
    s2, i2 = make_dataset(20, seed=3)
    s3, i3 = make_dataset(20, seed=4)
    assert s1 == s2 and np.array_equal(i1, i2)
    assert s1 != s3 and not np.array_equal(i1, i3)


def test_answers_are_right_and_focus_covers_the_asked_object():
    samples, _ = make_dataset(200, seed=0)
    assert {s.qtype for s in samples} == set(QUESTION_TYPES)
    words = set(vocabulary())
    for s in samples:
        assert set(s.question.split()) | {s.answer} <= words
        objs = s.objects
        if s.qtype == "count_all":
            assert s.answer == str(len(objs)) and len(s.focus) == 4 * len(objs)
        if s.qtype == "where":
            cell = CELLS.index(s.answer)
            assert set(cell_patches(cell)) == set(s.focus)
        if s.qtype == "color_of":
            shape = s.question.split()[-1]
            assert [o.color for o in objs if o.shape == shape] == [s.answer]
        if s.qtype == "exists":
            _, _, _, color, shape = s.question.split()
            assert s.answer == ("yes" if any(o.color == color and o.shape == shape for o in objs) else "no")


def test_questions_an_image_cannot_carry_are_refused():
    from sparsevlm.toy.data import Obj
    objs = (Obj("red", "circle", 0), Obj("red", "circle", 1), Obj("blue", "circle", 5))
    rng = np.random.default_rng(0)
    assert ask(objs, "color_of", rng) is None  # no unique shape
    assert ask(objs, "shape_of", rng)[1] == "circle"  # blue is unique
    with pytest.raises(ValueError, match="qtype='size'"):
        ask(objs, "size", rng)
