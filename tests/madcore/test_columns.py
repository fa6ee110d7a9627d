"""madcore.columns: declarations, the registry's conflict check and loud lookups."""
import dataclasses

import pytest

from madcore.columns import Column, ColumnRegistry, Producer, UndeclaredColumn, names

A = Column("a", "the a", "count", "the pool")
B = Column("b", "the b", "dB", "S_t", when="eval.b")


def test_a_column_is_a_frozen_declaration():
    with pytest.raises(dataclasses.FrozenInstanceError):
        A.name = "x"
    assert names((A, B)) == ("a", "b") and A.when == ""


def test_registry_looks_names_up_and_raises_for_undeclared_ones():
    reg = ColumnRegistry([Producer("p", "every run", (A, B))])
    assert reg["b"] is B and "a" in reg and reg.get("zz") is None
    assert reg.require(["b", "a"]) == ("b", "a") and reg.producers_of("a") == ("p",)
    with pytest.raises(UndeclaredColumn, match="'zz'"):
        reg["zz"]
    with pytest.raises(UndeclaredColumn, match="'x', 'y'"):
        reg.require(["a", "x", "y"])


def test_a_name_shared_by_producers_needs_equal_declarations():
    same = Column("a", "the a", "count", "the pool")             # equal, not the same object
    reg = ColumnRegistry([Producer("p", "", (A,)), Producer("q", "", (same,))])
    assert reg.producers_of("a") == ("p", "q")
    other = Column("a", "another a", "count", "the pool")
    with pytest.raises(ValueError, match="declared differently by p and q"):
        ColumnRegistry([Producer("p", "", (A,)), Producer("q", "", (other,))])
    with pytest.raises(ValueError, match="registered twice"):
        ColumnRegistry([Producer("p", "", (A,)), Producer("p", "", (B,))])
