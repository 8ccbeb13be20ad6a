import pytest
from hydra.utils import instantiate

from magicbokeh.errors import ParameterError
from magicbokeh.utils.cli import USER_ERROR_EXIT_CODE, exit_on_user_error


def _raise_parameter_error(value):
    raise ParameterError(f"value {value} out of range")


def test_user_error_exits_2_with_one_line(capsys):
    @exit_on_user_error
    def main():
        _raise_parameter_error(3)

    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == USER_ERROR_EXIT_CODE
    assert capsys.readouterr().err.strip() == "error: value 3 out of range"


def test_user_error_inside_hydra_instantiate_is_unwrapped(capsys):
    @exit_on_user_error
    def main():
        instantiate({"_target_": f"{__name__}._raise_parameter_error", "value": 7})

    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == USER_ERROR_EXIT_CODE
    assert "value 7 out of range" in capsys.readouterr().err


def test_programming_errors_are_not_swallowed():
    @exit_on_user_error
    def main():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        main()
