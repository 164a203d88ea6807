"""Registry and check_availability."""
import pytest

from engine.registry import Registry, check_availability


def test_decorator_registers_by_class_name():
    reg = Registry("TRAINER")

    @reg.register()
    class CoOp:
        pass

    def zeroshot():
        return 1

    assert reg.register(zeroshot) is zeroshot
    assert reg.get("CoOp") is CoOp and reg.get("zeroshot")() == 1
    assert "CoOp" in reg and "CoCoOp" not in reg
    assert reg.registered_names() == ["CoOp", "zeroshot"]


def test_duplicate_raises_unless_forced():
    reg = Registry("X")

    class A:
        pass

    reg.register(A)

    class A:  # noqa: F811 - same name, different object
        pass

    with pytest.raises(KeyError, match="already registered"):
        reg.register(A)
    reg.register(A, force=True)
    assert reg.get("A") is A


def test_unknown_name_suggests_closest():
    reg = Registry("TRAINER")
    for name in ["CoOp", "CoCoOp", "MaPLe", "ZeroshotCLIP"]:
        reg.register(type(name, (), {}))
    with pytest.raises(KeyError) as ei:
        reg.get("CoCoop")
    msg = str(ei.value)
    assert "Did you mean: CoCoOp" in msg and "TRAINER" in msg
    with pytest.raises(KeyError, match="Did you mean: MaPLe"):
        reg.get("maple")  # case-insensitive fallback


def test_check_availability():
    check_availability("sgd", ["adam", "sgd"])  # no error
    with pytest.raises(ValueError, match='Did you mean "cosine"'):
        check_availability("cosin", ["single_step", "multi_step", "cosine"])
    # ties go to the later candidate
    with pytest.raises(ValueError, match='Did you mean "ab"'):
        check_availability("a", ["ba", "ab"])
